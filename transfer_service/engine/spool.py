"""Disk spool for large blobs: a byte quota, and a spool file that can be read while it grows.

`SpoolFile` has one writer (the download, which hashes as it writes) and any number of
followers (upload attempts) that read what has been written so far and wait when they catch
up, so an upload runs alongside the download instead of after it. The file stays on disk until
the blob is committed, so a broken upload resumes from disk and never downloads again.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any


class SpoolQuota:
    """At most `limit` bytes reserved at once. A blob larger than the whole quota still
    runs, alone, so that it cannot wait forever."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0
        self._cond = asyncio.Condition()

    @asynccontextmanager
    async def reserve(self, n: int) -> AsyncIterator[None]:
        async with self._cond:
            await self._cond.wait_for(lambda: self.used == 0 or self.used + n <= self.limit)
            self.used += n
            self.peak = max(self.peak, self.used)
        try:
            yield
        finally:
            async with self._cond:
                self.used -= n
                self._cond.notify_all()


# Disk I/O and hashing run here, so that the event loop keeps moving bytes meanwhile.
_IO = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="spool-io")


class _ThreadedFd:
    """A file descriptor used from worker threads, closed only once no call on it is running
    (closing under a running write could hit another file that reused the number)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._last: concurrent.futures.Future[Any] | None = None
        self._closed = False

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        self._last = _IO.submit(fn, self.fd, *args)
        return await asyncio.wrap_future(self._last)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        fd = self.fd
        if self._last is None:
            os.close(fd)
        else:
            self._last.add_done_callback(lambda _f: os.close(fd))


def spool_path(spool_dir: Path, digest: str) -> Path:
    """A unique file name for one download of `digest`."""
    return spool_dir / f"{digest.partition(':')[2][:16]}-{uuid.uuid4().hex[:12]}.blob"


class SourceFailed(Exception):
    """The download behind a spool file failed (`error`): what was spooled is worthless."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class SpoolFile:
    """A blob being written to disk by one task and read, as it grows, by others.

    `written` only counts bytes already in the file. `complete` is set by the writer once every
    byte is written and verified; `fail()` records why the download was abandoned.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._out = _ThreadedFd(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        self.written = 0
        self.complete = False
        self.error: BaseException | None = None
        self._grew = asyncio.Event()

    def _wake(self) -> None:
        # Replace before setting: waiters hold the old event, later waiters get a fresh one.
        ev, self._grew = self._grew, asyncio.Event()
        ev.set()

    async def append(self, parts: list[bytes], hasher: Any) -> None:
        """Hash and write `parts` in a worker thread (hashlib and os.writev release the GIL)."""
        await self._out.call(_hash_and_write, parts, hasher)
        self.written += sum(len(p) for p in parts)
        self._wake()

    def finish(self) -> None:
        """Every byte is on disk and verified: followers may finish, the blob may be committed."""
        self.complete = True
        self._out.close()
        self._wake()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self._out.close()
        self._wake()

    def check(self) -> None:
        """Raise SourceFailed if the download failed."""
        if self.error is not None:
            raise SourceFailed(self.error)

    async def wait_complete(self) -> None:
        """Until the writer verified the whole blob; SourceFailed if it failed instead."""
        while not self.complete:
            self.check()
            await self._grew.wait()
        self.check()

    async def follow(
        self, start: int, chunk: int, idle_cut: float | None = None
    ) -> AsyncIterator[bytes]:
        """The bytes from `start` as they are written, up to the verified end.

        Raises SourceFailed when the download fails. With `idle_cut`, returns early (having
        yielded something) when no byte arrives for that long, so that a stalled source does
        not hold a request body open at the destination; the caller continues from there.
        """
        src = _ThreadedFd(os.open(self.path, os.O_RDONLY))
        try:
            pos = start
            while True:
                if pos < self.written:
                    n = min(chunk, self.written - pos)
                    data = await src.call(_pread, n, pos)
                    if not data:
                        raise OSError(f"spool file {self.path} is shorter than {pos + n}")
                    pos += len(data)
                    yield data
                    continue
                self.check()
                if self.complete:
                    return
                grew = self._grew.wait()
                if idle_cut is None or pos == start:
                    await grew
                    continue
                try:
                    await asyncio.wait_for(grew, idle_cut)
                except TimeoutError:
                    return
        finally:
            src.close()

    def remove(self) -> None:
        self._out.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _hash_and_write(fd: int, parts: list[bytes], hasher: Any) -> None:
    for p in parts:
        hasher.update(p)
    views = [memoryview(p) for p in parts]
    while views:
        n = os.writev(fd, views)
        # A short write (rare for a regular file): drop what went out, go on with the rest.
        while views and n >= len(views[0]):
            n -= len(views[0])
            views.pop(0)
        if views and n:
            views[0] = views[0][n:]


def _pread(fd: int, n: int, pos: int) -> bytes:
    return os.pread(fd, n, pos)
