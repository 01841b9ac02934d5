"""Find an image's signatures in its registry (for `signed` / `signed_by` rules).

cosign's tag scheme: the signatures of `sha256:<hex>` live in the manifest tagged
`sha256-<hex>.sig` in the same repository, one layer per signature, each a simple-signing
payload with the base64 signature in the layer's `dev.cosignproject.cosign/signature`
annotation. Verification is the policy service's (it holds the trusted keys): this module only
reads what is there, bounded.
"""

from __future__ import annotations

import json
from typing import Any

from mirror.v1 import common_pb2

from registry_client import errors as rc_errors

SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
MAX_SIGNATURES = 16
MAX_PAYLOAD_BYTES = 64 << 10


def signature_tag(digest: str) -> str:
    """`sha256:<hex>` -> `sha256-<hex>.sig`."""
    return digest.replace(":", "-", 1) + ".sig"


async def find_signatures(rc: Any, repo: str, digest: str) -> list[common_pb2.SignatureFact]:
    """The signatures stored for `digest` (none when the signature tag does not exist)."""
    try:
        manifest = await rc.get_manifest(repo, signature_tag(digest))
    except rc_errors.NotFound:
        return []
    try:
        doc = json.loads(manifest.data)
    except ValueError:
        return []
    out: list[common_pb2.SignatureFact] = []
    for layer in (doc.get("layers") or [])[:MAX_SIGNATURES]:
        if not isinstance(layer, dict):
            continue
        sig = (layer.get("annotations") or {}).get(SIGNATURE_ANNOTATION)
        if not isinstance(sig, str) or int(layer.get("size", 0)) > MAX_PAYLOAD_BYTES:
            continue
        payload = await _read_blob(rc, repo, str(layer.get("digest", "")))
        if payload is None:
            continue
        out.append(
            common_pb2.SignatureFact(
                manifest_digest=manifest.digest, payload=payload, signature=sig, found_by="tag"
            )
        )
    return out


async def _read_blob(rc: Any, repo: str, digest: str) -> bytes | None:
    buf = bytearray()
    try:
        async with rc.open_blob(repo, digest) as body:
            async for chunk in body.iter_chunks():
                buf += chunk
                if len(buf) > MAX_PAYLOAD_BYTES:
                    return None
    except rc_errors.NotFound:
        return None
    return bytes(buf)
