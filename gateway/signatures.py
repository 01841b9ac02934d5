"""Find an image's signatures in its registry (for `signed` / `signed_by` rules).

Two places hold cosign-format signatures of `sha256:<hex>`, and both are read:
- cosign's tag scheme: the manifest tagged `sha256-<hex>.sig` in the same repository;
- OCI referrers (cosign's OCI 1.1 mode): manifests whose `subject` is the image and whose
  artifact type is a cosign signature, listed through the referrers API or, where the registry
  has none (docker-registry 2.8.2), the `sha256-<hex>` tag index.
Either way one layer per signature, each a simple-signing payload with the base64 signature in
the layer's `dev.cosignproject.cosign/signature` annotation (a sigstore bundle or a Notary
signature has none and is not read). Verification is the policy service's (it holds the
trusted keys): this module only reads what is there, bounded.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from mirror.v1 import common_pb2

from registry_client import errors as rc_errors
from registry_client.referrers import subject_of
from servicekit.retry import is_retryable
from transfer_service.engine.referrers import kind_of

log = logging.getLogger("gateway.signatures")

SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
MAX_SIGNATURES = 16
MAX_PAYLOAD_BYTES = 64 << 10
# Signature manifests read from the referrers of one image (each a GET).
MAX_SIGNATURE_REFERRERS = 4


def signature_tag(digest: str) -> str:
    """`sha256:<hex>` -> `sha256-<hex>.sig`."""
    return digest.replace(":", "-", 1) + ".sig"


async def find_signatures(rc: Any, repo: str, digest: str) -> list[common_pb2.SignatureFact]:
    """The signatures stored for `digest`: under its `.sig` tag, then among its referrers
    (none when neither holds any). At most MAX_SIGNATURES in all."""
    out: list[common_pb2.SignatureFact] = []
    try:
        manifest = await rc.get_manifest(repo, signature_tag(digest))
    except rc_errors.NotFound:
        pass
    else:
        out += await _layers(rc, repo, manifest, "tag", MAX_SIGNATURES)
    for manifest in await _signature_referrers(rc, repo, digest):
        if len(out) >= MAX_SIGNATURES:
            break
        out += await _layers(rc, repo, manifest, "referrers", MAX_SIGNATURES - len(out))
    return out


async def _signature_referrers(rc: Any, repo: str, digest: str) -> list[Any]:
    """The signature manifests among the referrers of `digest` whose subject is it."""
    try:
        listed = await rc.list_referrers(repo, digest)
    except rc_errors.RegistryError as exc:
        if is_retryable(exc):
            raise
        # A registry that refuses the listing (an odd answer to an API it lacks): the tag
        # scheme's signatures still count.
        log.info("cannot list the referrers of %s@%s: %s", repo, digest, exc)
        return []
    out: list[Any] = []
    for r in listed:
        if kind_of(r.artifact_type, r.annotations) != "signature":
            continue
        if len(out) >= MAX_SIGNATURE_REFERRERS:
            break
        try:
            m = await rc.get_manifest(repo, r.digest)  # verified by digest
        except rc_errors.NotFound:
            continue
        if subject_of(m.data) == digest:  # the manifest itself, not only the listing
            out.append(m)
    return out


async def _layers(
    rc: Any, repo: str, manifest: Any, found_by: str, limit: int
) -> list[common_pb2.SignatureFact]:
    """The signatures of one signature manifest: its layers that carry the annotation."""
    try:
        doc = json.loads(manifest.data)
    except ValueError:
        return []
    if not isinstance(doc, dict):
        return []
    out: list[common_pb2.SignatureFact] = []
    for layer in (doc.get("layers") or [])[:limit]:
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
                manifest_digest=manifest.digest,
                payload=payload,
                signature=sig,
                found_by=found_by,
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
