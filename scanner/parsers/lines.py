"""Lines of a text a block at a time, so a huge file never becomes one huge list."""

from __future__ import annotations

from collections.abc import Iterator

_BLOCK = 64 << 10


def iter_lines(text: str) -> Iterator[str]:
    """Exactly `text.splitlines()`, produced lazily.

    A package database can be many MB and its parse may stop early at a record budget:
    splitlines() on the whole text would first hold a list of every line. Blocks end just
    after a "\\n", so no line (and no "\\r\\n") is ever split across two blocks.
    """
    start, n = 0, len(text)
    while start < n:
        stop = text.find("\n", start + _BLOCK)
        stop = n if stop < 0 else stop + 1
        yield from text[start:stop].splitlines()
        start = stop
