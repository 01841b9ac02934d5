"""Reading response bodies whole, with a size limit."""

from __future__ import annotations

import aiohttp


async def read_limited(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, but at most `limit` + 1 bytes (so the caller can tell it was too big).

    `StreamReader.read(n)` returns what has arrived so far, not n bytes: loop to the end.
    """
    parts: list[bytes] = []
    got = 0
    while got <= limit:
        chunk = await resp.content.read(min(limit + 1 - got, 1 << 20))
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)
