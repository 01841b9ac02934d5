"""Small helpers shared by the end-to-end tests."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from registry_testkit.images import digest_of
from registry_testkit.registry import RegistryProcess


def tags_of(reg: RegistryProcess, repo: str, user: str = "", password: str = "") -> list[str]:
    """The repository's tags via the registry API ([] when the repository does not exist)."""
    req = urllib.request.Request(f"{reg.url}/v2/{repo}/tags/list")
    if user:
        import base64

        cred = base64.b64encode(f"{user}:{password}".encode()).decode()
        req.add_header("Authorization", f"Basic {cred}")
    try:
        with urllib.request.urlopen(req, timeout=10, context=reg.ssl_context()) as resp:
            return sorted(json.load(resp).get("tags") or [])
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return []
        raise


def skopeo_digest(
    reg: RegistryProcess, repo: str, ref: str, user: str | None = None, password: str | None = None
) -> str:
    """Digest of the manifest exactly as stored (skopeo inspect --raw)."""
    return digest_of(reg, repo, ref, user, password)


def post_events(
    url: str, envelope: dict[str, Any] | bytes, secret: str
) -> tuple[int, dict[str, Any]]:
    data = envelope if isinstance(envelope, bytes) else json.dumps(envelope).encode()
    req = urllib.request.Request(
        url,
        data=data,
        method="POST",
        headers={
            "Content-Type": "application/vnd.docker.distribution.events.v1+json",
            "Authorization": f"Bearer {secret}",
        },
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def push_event(
    event_id: str, reg: RegistryProcess, repo: str, tag: str, digest: str, media_type: str
) -> dict[str, Any]:
    """A push event shaped like the ones docker-registry 2.8.2 sends."""
    return {
        "id": event_id,
        "timestamp": "2026-11-26T12:00:00Z",
        "action": "push",
        "target": {
            "mediaType": media_type,
            "digest": digest,
            "size": 500,
            "length": 500,
            "repository": repo,
            "url": f"{reg.url}/v2/{repo}/manifests/{digest}",
            "tag": tag,
        },
        "request": {
            "id": "req-1",
            "addr": "127.0.0.1:40000",
            "host": reg.host,
            "method": "PUT",
            "useragent": "skopeo",
        },
        "actor": {},
        "source": {"addr": "host:5000", "instanceID": "x"},
    }


def healthz(base: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{base}/healthz", timeout=5) as resp:
        return dict(json.load(resp))
