"""Disk spool for large blobs: a byte quota that makes copies wait rather than overfill."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path


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


def spool_path(spool_dir: Path, digest: str) -> Path:
    """A unique file name for one download of `digest`."""
    return spool_dir / f"{digest.partition(':')[2][:16]}-{uuid.uuid4().hex[:12]}.blob"
