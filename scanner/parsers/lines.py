"""Lines of a text one at a time, without the copies splitlines() or StringIO make."""

from __future__ import annotations

from collections.abc import Iterator


def iter_lines(text: str) -> Iterator[str]:
    """The lines of `text` (split on \\n, a trailing \\r dropped), produced lazily.

    A package database can be many MB: splitlines() would hold a list of every line, and
    StringIO a 4-bytes-per-character copy, for a parse that may stop early at a budget.
    """
    start, n = 0, len(text)
    while start < n:
        end = text.find("\n", start)
        if end < 0:
            end = n
        line = text[start:end]
        yield line[:-1] if line.endswith("\r") else line
        start = end + 1
