"""One writer per data directory: a second process on the same `--data` is refused.

The lock is an advisory `flock` on DATA/.lock, held for the life of the process (the kernel
drops it when the process dies, even by SIGKILL, so a crash never leaves a stale lock). The
file records who holds it, so that the refusal can name them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import IO

LOCK_NAME = ".lock"


class DataDirInUse(RuntimeError):
    """Another process holds the data directory."""


class DataDirLock:
    """A held lock; `release()` (or process exit) frees it."""

    def __init__(self, path: Path, handle: IO[str]) -> None:
        self.path = path
        self._handle = handle

    def release(self) -> None:
        with contextlib.suppress(OSError):
            fcntl.flock(self._handle, fcntl.LOCK_UN)
        self._handle.close()


def claim(data_dir: str | Path, holder: str) -> DataDirLock:
    """Lock `data_dir` for this process (creating it); raise DataDirInUse naming the holder."""
    folder = Path(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    handle = path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        who = _describe(handle.read())
        handle.close()
        raise DataDirInUse(
            f"the data directory {folder.resolve()} is in use by {who}; stop it, or give this "
            "process another --data"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(
        json.dumps(
            {
                "holder": holder,
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
        )
    )
    handle.flush()
    return DataDirLock(path, handle)


def _describe(text: str) -> str:
    try:
        doc = json.loads(text)
        return f"{doc['holder']} (pid {doc['pid']} on {doc['host']}, since {doc['since']})"
    except (ValueError, KeyError, TypeError):
        return "another process"
