"""A full data volume (spool, SQLite file or PostgreSQL server) named as such, never as an
internal error: the one place that recognises one, for every service."""

from __future__ import annotations

import errno
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from servicekit.errors import resource_exhausted

NO_SPACE = "no space left on the data volume"
# Below this many free bytes an I/O error while writing is taken for a full volume.
_LOW_SPACE = 1 << 20
# PostgreSQL's disk_full (SQLSTATE 53100): the database server's volume is full.
_PG_DISK_FULL = "53100"


def is_volume_full(exc: BaseException, volume: str | Path = "") -> bool:
    """Whether `exc`, or what it interrupted or was raised from, is a write failing for want
    of space: ENOSPC/EDQUOT, SQLite's SQLITE_FULL (or an I/O error while `volume` is all but
    full), PostgreSQL's disk_full."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if getattr(e, "sqlstate", None) == _PG_DISK_FULL:
            return True
        if isinstance(e, sqlite3.Error):
            code = getattr(e, "sqlite_errorcode", None)
            if code == sqlite3.SQLITE_FULL or "database or disk is full" in str(e).lower():
                return True
            if volume and code is not None and code & 0xFF == sqlite3.SQLITE_IOERR:
                try:
                    if shutil.disk_usage(volume).free < _LOW_SPACE:
                        return True
                except OSError:
                    pass
        # A failing ROLLBACK after SQLITE_FULL hides the first error in __context__.
        e = e.__cause__ or e.__context__
    return False


def no_space_message(exc: BaseException, volume: str | Path = "") -> str | None:
    """"no space left on the data volume (<volume>)" when `exc` is a full volume, else None."""
    if not is_volume_full(exc, volume):
        return None
    return f"{NO_SPACE} ({volume})" if volume else NO_SPACE


@contextmanager
def disk_full_as_exhausted(volume: str | Path) -> Iterator[None]:
    """Turn a full volume inside the block into RESOURCE_EXHAUSTED with a clear message."""
    try:
        yield
    except Exception as exc:
        message = no_space_message(exc, volume)
        if message is None:
            raise
        raise resource_exhausted(message) from exc
