"""A full data volume (spool or database) named as such, never as an internal error."""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from servicekit.errors import resource_exhausted


def no_space_message(exc: BaseException, volume: str | Path) -> str | None:
    """"no space left on the data volume (<path>)" when `exc` (or what caused it) is ENOSPC
    or SQLite's "database or disk is full"; None otherwise."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return f"no space left on the data volume ({volume})"
        if isinstance(e, sqlite3.OperationalError) and "full" in str(e).lower():
            return f"no space left on the data volume ({volume})"
        e = e.__cause__ or e.__context__
    return None


@contextmanager
def disk_full_as_exhausted(volume: str | Path) -> Iterator[None]:
    """Turn a full volume inside the block into RESOURCE_EXHAUSTED with a clear message."""
    try:
        yield
    except (OSError, sqlite3.OperationalError) as exc:
        message = no_space_message(exc, volume)
        if message is None:
            raise
        raise resource_exhausted(message) from exc
