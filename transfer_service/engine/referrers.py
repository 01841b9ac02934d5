"""Referrers of a copied image (signatures, attestations, SBOMs), copied after it, byte for byte.

Two places hold them, and both are looked at:
- cosign's tag scheme: `sha256-<hex>.sig` (signatures), `.att` (attestations), `.sbom`
  (SBOMs), each a manifest in the image's repository. Copied with its blobs under the same tag.
  A destination tag that holds entries the source's lacks (signatures made at the
  destination) is left alone and reported: copying would drop them.
- OCI referrers (a `subject` naming the image digest), listed through the referrers API or the
  `sha256-<hex>` tag index. Copied by digest; where the destination has no referrers API, its
  `sha256-<hex>` index gets their descriptors, merged with what it lists already (nothing of
  the destination's is dropped).

A referrer that cannot be copied never undoes the image: it is reported in
`ReferrerOutcome.problems`, and the others are still copied.
"""

from __future__ import annotations

import asyncio
import json
import weakref
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from registry_client import Manifest, mediatypes
from registry_client.errors import NotFound, RegistryError
from registry_client.excerpt import excerpt
from registry_client.referrers import descriptor_of, fallback_tag, merged_index
from transfer_service.engine.errors import CopyError
from transfer_service.engine.models import CopiedReferrer, CopyRequest, CopyResult

# The policy's words (plural) and the kind of one referrer (singular, CopiedReferrer.kind).
KINDS = {"signatures": "signature", "attestations": "attestation", "sboms": "sbom"}
ALL = "all"
CHOICES = (*KINDS, ALL)
TAG_SUFFIXES = {"signature": ".sig", "attestation": ".att", "sbom": ".sbom"}

# cosign / sigstore bundles say what they hold in this annotation; a bundle of a plain
# signature names cosign's sign predicate, any other predicate is an attestation.
_BUNDLE_PREDICATE = "dev.sigstore.bundle.predicateType"
_SIGN_PREDICATE = "https://sigstore.dev/cosign/sign/v1"
_MAX_REFERRERS = 64
_PROBLEM_CHARS = 200

CopyFn = Callable[[CopyRequest], Awaitable[CopyResult]]


@dataclass
class ReferrerOutcome:
    copied: list[CopiedReferrer] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Wanted:
    kinds: frozenset[str]
    everything: bool = False

    def __bool__(self) -> bool:
        return bool(self.kinds) or self.everything

    def takes(self, kind: str) -> bool:
        return self.everything or kind in self.kinds


def wanted(choices: Iterable[str]) -> Wanted:
    """The kinds a request's `copy_referrers` asks for ("all": every referrer, whatever its
    artifact type). Unknown words are refused earlier, by the service."""
    words = set(choices)
    if ALL in words:
        return Wanted(frozenset(KINDS.values()), everything=True)
    return Wanted(frozenset(KINDS[w] for w in words if w in KINDS))


def kind_of(artifact_type: str, annotations: dict[str, Any] | None = None) -> str:
    """signature, attestation or sbom by the artifact type (or config media type); any other
    type is its own kind (copied only under "all")."""
    t = artifact_type.lower()
    if t.startswith("application/vnd.dev.sigstore.bundle"):
        predicate = (annotations or {}).get(_BUNDLE_PREDICATE)
        return "attestation" if predicate and predicate != _SIGN_PREDICATE else "signature"
    if ("cosign" in t and ("sig" in t or "simplesigning" in t)) or "notary.signature" in t:
        return "signature"
    if "in-toto" in t or "intoto" in t or "dsse" in t or "cosign.attestation" in t:
        return "attestation"
    if "spdx" in t or "cyclonedx" in t or "syft" in t:
        return "sbom"
    return artifact_type or "unknown"


class ReferrerCopier:
    """Copies the referrers of one image; `copy_one` copies one manifest with its blobs (the
    engine's copy without referrers). One lock per destination tag index: two copies of one
    subject never race on its read-merge-write."""

    def __init__(self, copy_one: CopyFn) -> None:
        self._copy_one = copy_one
        self._index_locks: weakref.WeakValueDictionary[tuple[str, str, str], asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    async def copy(
        self, req: CopyRequest, subject: str, children: Iterable[str] = ()
    ) -> ReferrerOutcome:
        """The referrers of `subject` (the digest the destination now names) and of the
        `children` of an index copied whole."""
        want = wanted(req.copy_referrers)
        out = ReferrerOutcome()
        if not want:
            return out
        for digest in [subject, *list(children)[:_MAX_REFERRERS]]:
            for kind, suffix in TAG_SUFFIXES.items():
                if want.takes(kind):
                    tag = fallback_tag(digest) + suffix
                    await self._guard(out, tag, self._tagged(req, tag, kind, out))
            step = self._attached(req, digest, want, out)
            await self._guard(out, f"referrers of {digest}", step)
        return out

    async def _guard(self, out: ReferrerOutcome, what: str, work: Awaitable[None]) -> None:
        """Run one step; its registry or copy error becomes a reported problem."""
        try:
            await work
        except (RegistryError, CopyError, ValueError) as e:
            out.problems.append(f"{what}: {excerpt(str(e), _PROBLEM_CHARS)}")

    # -- cosign's tag scheme ---------------------------------------------------------------

    async def _tagged(self, req: CopyRequest, tag: str, kind: str, out: ReferrerOutcome) -> None:
        try:
            m = await req.src.get_manifest(req.src_repo, tag)
        except NotFound:
            return
        have = await req.dst.head_manifest(req.dst_repo, tag)
        if have is not None and have.digest != m.digest:
            theirs = await req.dst.get_manifest(req.dst_repo, tag)
            if not _entries_kept(theirs, m):
                out.problems.append(
                    f"{tag}: the destination's ({have.digest}) holds entries the source's lacks"
                    " (signed there?); left as it is, copying would drop them"
                )
                return
        await self._one(req, m.digest, tag)
        out.copied.append(CopiedReferrer(m.digest, kind, tag))

    # -- OCI referrers (subject) -----------------------------------------------------------

    async def _attached(
        self, req: CopyRequest, subject: str, want: Wanted, out: ReferrerOutcome
    ) -> None:
        listed = await req.src.list_referrers(req.src_repo, subject)
        if len(listed) > _MAX_REFERRERS:
            out.problems.append(
                f"referrers of {subject}: {len(listed)} listed, only the first "
                f"{_MAX_REFERRERS} looked at"
            )
        pushed: list[dict[str, Any]] = []
        for r in listed[:_MAX_REFERRERS]:
            step = self._referrer(req, subject, r.digest, want, out, pushed)
            await self._guard(out, r.digest, step)
        if pushed and not await req.dst.has_referrers_api(req.dst_repo, subject):
            await self._guard(
                out,
                f"{fallback_tag(subject)} at the destination",
                self._index(req, subject, pushed),
            )

    async def _referrer(
        self,
        req: CopyRequest,
        subject: str,
        digest: str,
        want: Wanted,
        out: ReferrerOutcome,
        pushed: list[dict[str, Any]],
    ) -> None:
        # Classified by the manifest itself (verified by digest), not by what the listing says.
        m = await req.src.get_manifest(req.src_repo, digest)
        doc = m.json()
        named = doc.get("subject")
        if not isinstance(named, dict) or named.get("digest") != subject:
            raise CopyError(f"listed as a referrer of {subject}, but its subject is not that")
        desc = descriptor_of(m.data, m.media_type, m.digest)
        annotations = doc.get("annotations")
        kind = kind_of(
            str(desc.get("artifactType", "")),
            annotations if isinstance(annotations, dict) else None,
        )
        if not want.takes(kind):
            return
        await self._one(req, m.digest, "")
        out.copied.append(CopiedReferrer(m.digest, kind, ""))
        pushed.append(desc)

    async def _index(self, req: CopyRequest, subject: str, pushed: list[dict[str, Any]]) -> None:
        tag = fallback_tag(subject)
        key = (req.dst.key, req.dst_repo, tag)
        lock = self._index_locks.get(key)
        if lock is None:
            lock = self._index_locks[key] = asyncio.Lock()
        async with lock:
            try:
                existing: bytes | None = (await req.dst.get_manifest(req.dst_repo, tag)).data
            except NotFound:
                existing = None
            data = merged_index(existing, pushed)
            if data is not None:
                await req.dst.put_manifest(req.dst_repo, tag, data, mediatypes.OCI_INDEX)

    async def _one(self, req: CopyRequest, digest: str, tag: str) -> None:
        res = await self._copy_one(
            CopyRequest(
                src=req.src,
                src_repo=req.src_repo,
                src_ref=digest,
                dst=req.dst,
                dst_repo=req.dst_repo,
                dst_tag=tag,
            )
        )
        if res.digest != digest:  # an index with a filter would say so; a referrer has none
            raise CopyError(f"copied as {res.digest}, not {digest}")


def _entries_kept(theirs: Manifest, ours: Manifest) -> bool:
    """Whether every layer (each one signature, attestation or SBOM in cosign's scheme) of
    the destination's manifest is in the source's: then replacing it loses nothing."""

    def layers(m: Manifest) -> list[str]:
        try:
            doc = json.loads(m.data)
        except ValueError:
            return ["<not JSON>"]
        items = doc.get("layers") if isinstance(doc, dict) else None
        if not isinstance(items, list):
            return ["<no layers>"]
        return [json.dumps(x, sort_keys=True) for x in items]

    mine = set(layers(ours))
    return all(x in mine for x in layers(theirs))


def provenance_note(req: CopyRequest, subject: str, copied: list[CopiedReferrer]) -> str:
    """What a copied signature still proves when the destination names the image otherwise."""
    if not any(c.kind in ("signature", "attestation") for c in copied):
        return ""
    src_tag = "" if ":" in req.src_ref else req.src_ref
    if req.dst_repo == req.src_repo and (not req.dst_tag or req.dst_tag == src_tag):
        return ""
    where = f"{req.dst_repo}:{req.dst_tag}" if req.dst_tag else f"{req.dst_repo}@{subject}"
    return (
        f"signatures sign the digest {subject}, unchanged at {where}, so they verify there; "
        f"a cosign payload's docker-reference still names {req.src_repo}, where it was signed"
    )


def summary(result: Any, asked: Iterable[str]) -> str:
    """The job message of a copy that asked for referrers: what was copied, what could not
    be (the image was), and what a copied signature still proves; bounded."""
    asked = list(asked)
    if not asked:
        return ""
    copied: list[CopiedReferrer] = list(getattr(result, "referrers", None) or [])
    problems: list[str] = list(getattr(result, "referrer_problems", None) or [])
    parts = []
    if copied:
        names = ", ".join(f"{c.kind} {c.tag or c.digest}" for c in copied[:8])
        more = f" and {len(copied) - 8} more" if len(copied) > 8 else ""
        parts.append(f"copied {len(copied)} referrer(s) after the image: {names}{more}")
    elif not problems:
        parts.append(f"no referrers ({', '.join(asked)}) of the image to copy")
    if problems:
        parts.append(f"referrers NOT copied (the image was): {'; '.join(problems[:4])}")
    note = str(getattr(result, "referrer_note", "") or "")
    if note:
        parts.append(note)
    return excerpt(". ".join(parts), 1000)
