"""Free loopback ports for child servers (the demo, bench/ and the tests).

Asking the kernel for port 0 and closing the socket races: the kernel hands the same port to
the next caller, or to an outgoing connection, before the child binds it. Ports here come
from below the ephemeral range (outgoing connections never take them), from a slice of that
range of its own for each pytest-xdist worker, walked by a per-process counter, so two
callers in one run are never handed the same port.
"""

from __future__ import annotations

import itertools
import os
import random
import socket
import threading

_LOW, _HIGH = 20000, 32000  # below Linux's default ip_local_port_range (32768-60999)


def _slice() -> tuple[int, int]:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0
    width = (_HIGH - _LOW) // max(count, 1)
    start = _LOW + (index % max(count, 1)) * width
    return start, start + width


_lock = threading.Lock()
_start, _end = _slice()
_counter = itertools.count(random.randrange(_end - _start))


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now and no other caller was handed."""
    with _lock:
        for _ in range(_end - _start):
            port = _start + next(_counter) % (_end - _start)
            if _bindable(port):
                return port
    raise RuntimeError(f"no free loopback port in {_start}-{_end}")
