"""The counting proxy of the benchmarks, in a process of its own.

In the benchmark's own process the proxy would share one interpreter lock with the code that
drives and watches the run, and slow whatever goes through it by what the bench does. Here
it gets a process (and so a core) of its own; the bench asks it for the request count.
"""

from __future__ import annotations

import multiprocessing as mp
import sys
from collections import Counter
from multiprocessing.connection import Connection
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from registry_testkit.faultproxy import FaultProxy
from registry_testkit.ports import free_port


def request_kinds(log: list[tuple[str, str, str]]) -> dict[str, int]:
    """Requests by method and kind of path (tag list, manifest, blob, upload, ping)."""
    kinds: Counter[str] = Counter()
    for method, path, _ in log:
        if path.rstrip("/") == "/v2":
            kind = "ping"
        elif "/tags/list" in path:
            kind = "tags"
        else:
            kind = next((k for k in ("manifests", "uploads", "blobs") if f"/{k}/" in path), "other")
        kinds[f"{method} {kind}"] += 1
    return dict(kinds)


def _serve(upstream: str, port: int, conn: Connection) -> None:
    proxy = FaultProxy(upstream, port=port).start()
    conn.send("ready")
    while True:
        cmd = conn.recv()
        if cmd == "count":
            conn.send(len(proxy.log))
        elif isinstance(cmd, tuple) and cmd[0] == "kinds":
            _, since, until = cmd
            log = [e for e, t in zip(proxy.log, proxy.times, strict=True) if t <= until]
            conn.send(request_kinds(log[since:]))
        elif isinstance(cmd, tuple) and cmd[0] == "count_until":
            conn.send(sum(1 for t in proxy.times if t <= cmd[1]))
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

    def count_until(self, until: float) -> int:
        """Requests received up to the wall-clock time `until`."""
        self._conn.send(("count_until", until))
        return int(self._conn.recv())

    def kinds(self, since: int = 0, until: float = float("inf")) -> dict[str, int]:
        """Requests after the first `since` (up to `until`), by method and kind of path."""
        self._conn.send(("kinds", since, until))
        return dict(self._conn.recv())

    def stop(self) -> None:
        self._conn.send("stop")
        self._conn.poll(10)
        self._proc.join(10)
