"""The counting proxy of the benchmarks, in a process of its own.

In the benchmark's own process the proxy would share one interpreter lock with the code that
drives and watches the run, and slow whatever goes through it by what the bench does. Here
it gets a process (and so a core) of its own; the bench asks it for the request count.
"""

from __future__ import annotations

import multiprocessing as mp
import sys
from multiprocessing.connection import Connection
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from registry_testkit.faultproxy import FaultProxy
from registry_testkit.ports import free_port


def _serve(upstream: str, port: int, conn: Connection) -> None:
    proxy = FaultProxy(upstream, port=port).start()
    conn.send("ready")
    while True:
        cmd = conn.recv()
        if cmd == "count":
            conn.send(len(proxy.log))
        elif cmd == "gets":
            conn.send(sum(1 for m, p, _ in proxy.log if m == "GET" and "/tags/list" not in p))
        else:
            proxy.stop()
            conn.send("stopped")
            return


class CountingProxy:
    """A FaultProxy in front of `upstream`, in a child process; `count()` requests so far."""

    def __init__(self, upstream: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._conn, child = mp.Pipe()
        self._proc = mp.get_context("spawn").Process(
            target=_serve, args=(upstream, self.port, child), daemon=True
        )
        self._proc.start()
        if not self._conn.poll(30) or self._conn.recv() != "ready":
            raise RuntimeError("the counting proxy did not start")

    def count(self) -> int:
        self._conn.send("count")
        return int(self._conn.recv())

    def stop(self) -> None:
        self._conn.send("stop")
        self._conn.poll(10)
        self._proc.join(10)
