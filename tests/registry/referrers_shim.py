"""The OCI 1.1 referrers API in front of a real docker-registry 2.8.2, which has none.

Everything is forwarded to the registry (it stores every manifest and blob); the proxy only
remembers the manifests pushed through it with a `subject` and answers
`GET /v2/<name>/referrers/<digest>` from them, `page_size` descriptors a page with a `Link` to
the next, honouring `artifactType` (and saying so in `OCI-Filters-Applied`). `self_link`
makes it a hostile registry whose every page links to itself.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from aiohttp import web

from registry_testkit.faultproxy import FaultProxy

_REFERRERS = re.compile(r"^/v2/(?P<name>.+)/referrers/(?P<digest>sha256:[0-9a-f]{64})$")
_MANIFEST = re.compile(r"^/v2/(?P<name>.+)/manifests/[^/]+$")
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


@dataclass
class ReferrersShim(FaultProxy):
    page_size: int = 1
    self_link: bool = False
    # (repository, subject digest) -> descriptors, in push order.
    referrers: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        m = _REFERRERS.match(request.path)
        if m and request.method == "GET":
            with self._lock:
                self.log.append((request.method, request.path, request.query_string))
            return self._answer(request, m["name"], m["digest"])
        resp = await super()._handle(request)
        m = _MANIFEST.match(request.path)
        if m and request.method == "PUT" and resp.status == 201:
            self._remember(m["name"], await request.read(), request.content_type)
        return resp

    def _remember(self, name: str, body: bytes, media_type: str) -> None:
        doc = json.loads(body)
        subject = doc.get("subject") or {}
        if not subject.get("digest"):
            return
        desc: dict[str, Any] = {
            "mediaType": media_type,
            "digest": "sha256:" + hashlib.sha256(body).hexdigest(),
            "size": len(body),
        }
        at = doc.get("artifactType") or (doc.get("config") or {}).get("mediaType")
        if at:
            desc["artifactType"] = at
        if doc.get("annotations"):
            desc["annotations"] = doc["annotations"]
        with self._lock:
            self.referrers.setdefault((name, subject["digest"]), []).append(desc)

    def _answer(self, request: web.Request, name: str, digest: str) -> web.Response:
        with self._lock:
            found = list(self.referrers.get((name, digest), []))
        headers = {}
        wanted = request.query.get("artifactType")
        if wanted:
            found = [d for d in found if d.get("artifactType") == wanted]
            headers["OCI-Filters-Applied"] = "artifactType"
        start = int(request.query.get("last", "0") or 0)
        page = found[start : start + self.page_size]
        if self.self_link:
            headers["Link"] = f'<{request.path_qs}>; rel="next"'
        elif start + self.page_size < len(found):
            q = f"last={start + self.page_size}"
            q += f"&artifactType={quote(wanted, safe='')}" if wanted else ""
            headers["Link"] = f'<{request.path}?{q}>; rel="next"'
        body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": page})
        return web.Response(body=body.encode(), headers=headers, content_type=OCI_INDEX)
