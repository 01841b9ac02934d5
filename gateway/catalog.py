"""List a registry's repositories (`GET /v2/_catalog`, Link-paginated) for glob sources.

registry_client has no catalog call; this goes through the client's transport, so auth (scope
`registry:catalog:*`), TLS, limits and retries are the shared client's.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urljoin

_LINK_NEXT = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')
MAX_PAGES = 1000


async def list_repositories(rc: Any, page_size: int = 1000) -> list[str]:
    """Every repository name the registry lists (it may list only what the account can see)."""
    names: list[str] = []
    url: str | None = f"/v2/_catalog?n={page_size}"
    for _ in range(MAX_PAGES):
        if url is None:
            break
        async with rc.transport.request(
            "GET", url, scopes=["registry:catalog:*"], context="catalog"
        ) as resp:
            body = await resp.content.read(16 << 20)
            link = resp.headers.get("Link", "")
        doc = json.loads(body)
        names.extend(r for r in (doc.get("repositories") or []) if isinstance(r, str))
        m = _LINK_NEXT.search(link)
        url = urljoin(rc.cfg.base_url + "/", m.group(1)) if m else None
    return names
