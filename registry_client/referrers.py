"""Referrers of a manifest: the OCI 1.1 referrers API answer and the referrers tag schema.

A registry with the API answers `GET /v2/<name>/referrers/<digest>` with an image index whose
`manifests` are the descriptors of every manifest whose `subject` is that digest. Without it
(docker-registry 2.8.2 answers 404), the pushing client keeps the same index under the tag
`sha256-<hex>` (the "referrers tag schema" of the distribution spec). cosign's older scheme
(`sha256-<hex>.sig`, `.att`, `.sbom`) is tags only and is not a referrers index.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol

from registry_client import mediatypes
from registry_client.errors import NotFound
from registry_client.names import is_verifiable_digest


class ManifestReader(Protocol):
    """A client that reads manifests (RegistryClient, or transfer_service.remote's client)."""

    async def get_manifest(self, repo: str, ref: str) -> Any: ...


@dataclass(frozen=True)
class Referrer:
    """One descriptor of a referrers index; `raw` is the descriptor exactly as listed."""

    media_type: str
    digest: str
    size: int
    artifact_type: str = ""
    annotations: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    raw: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


def subject_of(manifest: bytes) -> str | None:
    """The digest a manifest's `subject` names (what it is attached to), or None: it names
    none (an image, an index), or it is not JSON. A listing is the registry's (or, in the
    tag schema, any pusher's) word; only this says what a referrer refers to."""
    try:
        doc = json.loads(manifest)
    except ValueError:
        return None
    subject = doc.get("subject") if isinstance(doc, dict) else None
    digest = subject.get("digest") if isinstance(subject, dict) else None
    return digest if isinstance(digest, str) else None


def fallback_tag(digest: str) -> str:
    """`sha256:<hex>` -> `sha256-<hex>`, the referrers tag schema's tag."""
    algo, _, hex_ = digest.partition(":")
    return f"{algo}-{hex_}"


def parse_index(data: bytes, artifact_type: str = "") -> list[Referrer]:
    """The well-formed descriptors of a referrers index (others are dropped, not fatal: a
    registry's or another client's index may hold anything)."""
    try:
        doc = json.loads(data)
    except ValueError:
        return []
    entries = doc.get("manifests") if isinstance(doc, dict) else None
    out: list[Referrer] = []
    for e in entries if isinstance(entries, list) else []:
        ref = _descriptor(e)
        if ref is not None and (not artifact_type or ref.artifact_type == artifact_type):
            out.append(ref)
    return out


def _descriptor(e: Any) -> Referrer | None:
    if not isinstance(e, dict):
        return None
    digest, size, mt = e.get("digest"), e.get("size"), e.get("mediaType")
    if not isinstance(digest, str) or not is_verifiable_digest(digest):
        return None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        return None
    at = e.get("artifactType")
    ann = e.get("annotations")
    annotations = (
        {k: v for k, v in ann.items() if isinstance(k, str) and isinstance(v, str)}
        if isinstance(ann, dict)
        else {}
    )
    return Referrer(
        media_type=mt if isinstance(mt, str) else mediatypes.OCI_MANIFEST,
        digest=digest,
        size=size,
        artifact_type=at if isinstance(at, str) else "",
        annotations=annotations,
        raw=dict(e),
    )


async def tag_schema_referrers(
    reader: ManifestReader, repo: str, digest: str, artifact_type: str = ""
) -> list[Referrer]:
    """The referrers the `sha256-<hex>` index tag lists (none when there is no such tag):
    one manifest read."""
    try:
        m = await reader.get_manifest(repo, fallback_tag(digest))
    except NotFound:
        return []
    return parse_index(m.data, artifact_type)


async def referrers_of(
    reader: ManifestReader, repo: str, digest: str, artifact_type: str = ""
) -> list[Referrer]:
    """`reader.list_referrers` (the referrers API, else the tag schema) where the client has
    it (RegistryClient, and the transfer service's ReadReferrers through
    transfer_service.remote); else the tag schema alone, through `get_manifest`: a reader of
    manifests only still sees what a registry without the API (2.8.2) holds."""
    lister = getattr(reader, "list_referrers", None)
    if callable(lister):
        listed: list[Referrer] = await lister(repo, digest, artifact_type)
        return listed
    return await tag_schema_referrers(reader, repo, digest, artifact_type)


def descriptor_of(data: bytes, media_type: str, digest: str) -> dict[str, Any]:
    """The referrers-index descriptor of a manifest (for the tag schema): mediaType, digest,
    size, and its artifactType (else its config's media type) and annotations."""
    doc = json.loads(data)
    out: dict[str, Any] = {"mediaType": media_type, "digest": digest, "size": len(data)}
    at = doc.get("artifactType")
    cfg = doc.get("config")
    if not isinstance(at, str) and isinstance(cfg, dict):
        at = cfg.get("mediaType")
    if isinstance(at, str) and at:
        out["artifactType"] = at
    if isinstance(doc.get("annotations"), dict) and doc["annotations"]:
        out["annotations"] = doc["annotations"]
    return out


def merged_index(existing: bytes | None, added: list[dict[str, Any]]) -> bytes | None:
    """The tag-schema index holding every entry of `existing` (the bytes the tag holds now,
    each entry kept as it is, even ones this client cannot read) plus `added`; None when
    every added digest is listed already (nothing to write). Raises ValueError when
    `existing` is not an index: it is someone else's, not to be overwritten."""
    manifests: list[Any] = []
    if existing is not None:
        try:
            doc = json.loads(existing)
        except ValueError as e:
            raise ValueError("the referrers tag holds something that is not JSON") from e
        if not isinstance(doc, dict) or not isinstance(doc.get("manifests"), list):
            raise ValueError("the referrers tag holds something that is not an index")
        manifests = list(doc["manifests"])
    have = {e.get("digest") for e in manifests if isinstance(e, dict)}
    new = [d for d in added if d["digest"] not in have]
    if not new:
        return None
    out = {"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX, "manifests": manifests + new}
    return json.dumps(out, separators=(",", ":")).encode()
