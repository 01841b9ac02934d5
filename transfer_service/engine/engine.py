"""The copy engine: one image (manifest or index) from a source to a destination registry.

Order: blobs, then each child manifest by digest, then the top manifest by tag (tags last), so
the destination never names something incomplete. Exact manifest bytes are pushed with their
media type, so the destination digest equals the source digest.

Platform filter (index only), decided so that no rewritten index is ever pushed:
- the chosen children are copied by digest;
- if every other child of the index is already at the destination, the original index is
  pushed (same digest as the source);
- otherwise, if exactly one child was chosen, that child's manifest is tagged (its digest is
  the source child's digest; `CopyResult.digest` says which);
- otherwise (two or more, but not all) the copy is refused up front with PlatformFilterError:
  an index of only those children would be a new object with a new digest.

What it asks the destination (each request costs the registry more than it costs us): a single
image with a blob the repository is not known to hold is not HEADed as a manifest first; a blob
no destination repository is known to hold is not HEADed either, its upload session is opened
by a POST that would have mounted it from the repository itself (201: held already); a blob
this engine placed in the repository minutes ago is skipped unasked (RecentBlobs), and placed
again, checked, if the manifest push finds it gone. A later attempt of a copy (`resumed`)
HEADs every blob first: what reached the destination before is likely there.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from registry_client import Manifest, Upload, mediatypes, names
from registry_client.errors import InvalidRequest, NotFound, PermissionDenied, RegistryError
from registry_client.images import platform_matches, platform_string
from transfer_service.engine.blobs import Blob, BlobMover
from transfer_service.engine.errors import (
    DescriptorMismatch,
    InvalidReference,
    PlatformFilterError,
    TagExists,
    UnsupportedManifest,
)
from transfer_service.engine.locations import BlobLocations, KnownSizes, RecentBlobs
from transfer_service.engine.models import CopyProgress, CopyRequest, CopyResult
from transfer_service.engine.referrers import CHOICES as REFERRER_CHOICES
from transfer_service.engine.referrers import ReferrerCopier, provenance_note
from transfer_service.engine.spool import SpoolQuota

log = logging.getLogger(__name__)


ProgressFn = Callable[[CopyProgress], None]
T = TypeVar("T")


@dataclass
class _Plan:
    top: Manifest
    children: list[Manifest] = field(default_factory=list)  # pushed by digest, before the top
    tag_target: Manifest | None = None  # what dst_tag names (None: the top)
    push_top: bool = True
    platforms: list[str] = field(default_factory=list)


class _Reporter:
    """Keeps the counters and calls the progress callback (byte updates throttled)."""

    def __init__(self, fn: ProgressFn | None, interval: float = 0.2) -> None:
        self.p = CopyProgress()
        self.trusted: list[Blob] = []  # skipped as placed there minutes ago (RecentBlobs)
        self._fn = fn
        self._interval = interval
        self._last = 0.0

    def emit(self, force: bool = True) -> None:
        if self._fn is None:
            return
        now = time.monotonic()
        if force or now - self._last >= self._interval:
            self._last = now
            self._fn(replace(self.p))

    def add_bytes(self, n: int) -> None:
        self.p.bytes_done += n
        self.emit(force=False)


class CopyEngine:
    """Copies images between registries with bounded concurrency and a bounded disk spool."""

    def __init__(
        self,
        spool_dir: str | Path,
        spool_threshold: int = 64 << 20,
        spool_quota: int = 8 << 30,
        max_concurrent_blobs: int = 8,
        blob_locations: BlobLocations | None = None,
        blob_attempts: int = 3,
        backoff_base: float = 0.5,
    ) -> None:
        self.spool_dir = Path(spool_dir)
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self.spool_threshold = spool_threshold
        self.quota = SpoolQuota(spool_quota)
        self.locations = blob_locations or BlobLocations()
        self.sizes = KnownSizes()
        self.recent = RecentBlobs()
        self.mover = BlobMover(
            self.spool_dir, self.quota, attempts=blob_attempts, backoff_base=backoff_base
        )
        self._blob_slots = asyncio.Semaphore(max_concurrent_blobs)
        # (destination registry, digest) -> future of the repo it landed in (None: failed).
        self._inflight: dict[tuple[str, str], asyncio.Future[str | None]] = {}
        self.downloads = 0  # blobs fetched from a source (for tests and metrics)
        self._referrers = ReferrerCopier(self._copy_image)

    # -- public ----------------------------------------------------------------------------

    async def copy(self, req: CopyRequest, progress: ProgressFn | None = None) -> CopyResult:
        """Copy one image; see the module docstring for order and the platform filter. Then,
        when asked (`copy_referrers`), its referrers (see `referrers`): their failures are
        reported in the result, never raised, since the image is copied by then."""
        result = await self._copy_image(req, progress)
        if not req.copy_referrers:
            return result
        # An index pushed whole: its children are there by digest, and may be signed one by
        # one (cosign sign --recursive). A one-platform copy tags the child: that is the
        # subject, and the index (not at the destination) keeps its referrers.
        children = result.children if result.pushed_index else []
        out = await self._referrers.copy(req, result.digest, children)
        result.referrers = out.copied
        result.referrer_problems = out.problems
        result.referrer_note = provenance_note(req, result.digest, out.copied)
        return result

    async def _copy_image(self, req: CopyRequest, progress: ProgressFn | None = None) -> CopyResult:
        _validate(req)
        rep = _Reporter(progress)
        top = await req.src.get_manifest(req.src_repo, req.src_ref)
        rep.p.digest, rep.p.media_type = top.digest, top.media_type
        plan = await self._plan(req, top)
        target = plan.tag_target or plan.top
        rep.p.digest, rep.p.media_type = target.digest, target.media_type
        if req.fail_if_tag_exists and req.dst_tag:
            existing = await req.dst.head_manifest(req.dst_repo, req.dst_tag)
            if existing is not None and existing.digest != target.digest:
                raise TagExists(req.dst_repo, req.dst_tag, existing.digest, target.digest)

        images = [m for m in [*plan.children, plan.top] if mediatypes.is_image(m.media_type)]
        rep.p.manifests_total = len(plan.children) + (1 if plan.push_top else 0)
        # Manifests already at the destination need nothing: their blobs are there.
        manifests = [*plan.children, plan.top]
        if plan.children or self._all_blobs_known(req, plan.top):
            heads = await _all(req.dst.head_manifest(req.dst_repo, m.digest) for m in manifests)
        else:
            # An image with a blob the repository is not known to hold (a new image, in
            # the common case): its blobs are checked one by one anyway, and the manifest is
            # pushed after them, so asking for the manifest first would only cost a request.
            heads = [None]
        present = {m.digest for m, h in zip(manifests, heads, strict=True) if h is not None}
        for m, h in zip(manifests, heads, strict=True):
            if h is not None:
                # Skipped, so the destination's HEAD must agree with what we would push.
                entry = {"digest": m.digest, "size": m.size, "mediaType": m.media_type}
                _check_manifest(f"{req.dst_repo} at the destination", entry, h.media_type, h.size)
        needed: dict[str, Blob] = {}
        there: dict[str, Blob] = {}
        for m in images:
            for b in _blobs_of(m):
                (there if m.digest in present else needed)[b.digest] = b
        for d in needed:
            there.pop(d, None)
        rep.p.blobs_total = len(needed) + len(there)
        rep.p.bytes_total = sum(b.size for b in [*needed.values(), *there.values()])
        rep.p.blobs_skipped = len(there)
        rep.p.bytes_skipped = sum(b.size for b in there.values())
        rep.emit()

        try:
            # A single image's blobs may be skipped on recent sight: its manifest push, which
            # would find one gone, is the check (see _push_image).
            trust = not plan.children
            async with asyncio.TaskGroup() as tg:
                tasks = {
                    d: tg.create_task(self._blob(req, b, rep, trust)) for d, b in needed.items()
                }
                for child in plan.children:
                    deps = [tasks[b.digest] for b in _blobs_of(child) if b.digest in tasks]
                    tg.create_task(self._push_after(req, child, deps, present, rep))
        except BaseExceptionGroup as group:
            # Callers get the blob's own error (a registry_client error), not a group.
            raise _first_error(group) from None
        if req.dst_tag and req.before_tag is not None:
            await req.before_tag(plan.top.digest)
        if plan.push_top:
            ref = req.dst_tag if (req.dst_tag and plan.tag_target is None) else plan.top.digest
            await self._push_image(req, plan.top, ref, rep)
        if plan.tag_target is not None and req.dst_tag:
            await req.dst.put_manifest(
                req.dst_repo, req.dst_tag, plan.tag_target.data, plan.tag_target.media_type
            )
        rep.emit()
        return CopyResult(
            digest=target.digest,
            media_type=target.media_type,
            progress=replace(rep.p),
            platforms=plan.platforms,
            pushed_index=plan.push_top and mediatypes.is_index(plan.top.media_type),
            children=[c.digest for c in plan.children],
        )

    def _all_blobs_known(self, req: CopyRequest, image: Manifest) -> bool:
        """Whether this engine saw every blob of `image` in the destination repository."""
        reg = req.dst.key
        return all(req.dst_repo in self.locations.repos(reg, b.digest) for b in _blobs_of(image))

    # -- planning --------------------------------------------------------------------------

    async def _plan(self, req: CopyRequest, top: Manifest) -> _Plan:
        if mediatypes.is_image(top.media_type):
            return _Plan(top)
        if not mediatypes.is_index(top.media_type):
            raise UnsupportedManifest(f"cannot copy a manifest of type {top.media_type!r}")
        entries = _index_entries(top)
        chosen = [e for e in entries if _matches(e, req.platforms)] if req.platforms else entries
        if not chosen:
            raise PlatformFilterError(
                f"no platform of {req.src_repo}:{req.src_ref} matches {', '.join(req.platforms)}"
                f" (it has {', '.join(_platform_of(e) for e in entries) or 'none'})"
            )
        plan = _Plan(top, platforms=[_platform_of(e) for e in chosen])
        if len(chosen) < len(entries):
            rest = [e for e in entries if e not in chosen]
            have = await _all(req.dst.head_manifest(req.dst_repo, e["digest"]) for e in rest)
            for e, h in zip(rest, have, strict=True):
                if h is not None:
                    _check_manifest(f"{req.dst_repo} at the destination", e, h.media_type, h.size)
            if any(h is None for h in have):
                if len(chosen) > 1:
                    raise PlatformFilterError(
                        f"the filter selects {len(chosen)} of {len(entries)} platforms and the "
                        "destination lacks the others: an index of only these would get a new "
                        "digest. Select one platform, or all."
                    )
                plan.push_top = False
        children = await _all(req.src.get_manifest(req.src_repo, e["digest"]) for e in chosen)
        for e, child in zip(chosen, children, strict=True):
            _check_manifest(f"{req.src_repo}:{req.src_ref}", e, child.media_type, child.size)
        for child in children:
            if mediatypes.is_index(child.media_type):
                raise UnsupportedManifest("an index inside an index is not supported")
            plan.children.append(child)
        if not plan.push_top:
            plan.tag_target = plan.children[0]
        return plan

    # -- blobs -----------------------------------------------------------------------------

    async def _blob(
        self, req: CopyRequest, blob: Blob, rep: _Reporter, trust: bool = False
    ) -> None:
        """Skip, mount or transfer one blob; a blob in flight for another copy is waited on.
        `trust`: a blob this engine placed in the repository minutes ago is skipped unasked."""
        key = (req.dst.key, blob.digest)
        while (other := self._inflight.get(key)) is not None:
            landed = await asyncio.shield(other)
            if landed is not None:
                break
        fut: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        outcome: str | None = None
        try:
            if trust and self._recently_held(req, blob):
                rep.trusted.append(blob)
                outcome = "skipped"
            else:
                outcome = await self._place(req, blob, rep)
        finally:
            self._inflight.pop(key, None)
            fut.set_result(req.dst_repo if outcome else None)
        if outcome == "skipped":
            rep.p.blobs_skipped += 1
            rep.p.bytes_skipped += blob.size
        elif outcome == "mounted":
            rep.p.blobs_mounted += 1
            rep.p.bytes_skipped += blob.size
        else:
            rep.p.blobs_done += 1
        rep.emit()

    def _recently_held(self, req: CopyRequest, blob: Blob) -> bool:
        return self.sizes.get(blob.digest) == blob.size and self.recent.holds(
            req.dst.key, req.dst_repo, blob.digest
        )

    def _held_at(self, req: CopyRequest, blob: Blob) -> None:
        """The destination repository holds `blob` now (checked, mounted or uploaded)."""
        self.locations.add(req.dst.key, blob.digest, req.dst_repo)
        self.recent.add(req.dst.key, req.dst_repo, blob.digest)

    async def _place(self, req: CopyRequest, blob: Blob, rep: _Reporter) -> str:
        dst, reg = req.dst, req.dst.key
        if (
            not req.resumed
            and req.src.key != reg
            and blob.size < self.spool_threshold
            and not self.locations.repos(reg, blob.digest)
        ):
            placed = await self._upload_unless_held(req, blob, rep)
            if placed is not None:
                return placed
        held = await dst.blob_size(req.dst_repo, blob.digest)
        if held is not None:
            # Skipping trusts the manifest's size only as far as the destination confirms it.
            _check_held(req, blob, held)
            self.sizes.add(blob.digest, held)
            self._held_at(req, blob)
            return "skipped"
        candidates = [r for r in self.locations.repos(reg, blob.digest) if r != req.dst_repo]
        if req.src.key == reg and req.src_repo != req.dst_repo:
            candidates.insert(0, req.src_repo)
        known = self.sizes.get(blob.digest)
        if candidates and known is not None:
            _check_held(req, blob, known)  # a lie is refused before anything is mounted
        for repo in candidates[:3]:
            try:
                if await dst.mount_blob(req.dst_repo, blob.digest, repo):
                    if known is None:
                        known = await dst.blob_size(req.dst_repo, blob.digest)
                        _check_held(req, blob, known)
                        self.sizes.add(blob.digest, blob.size)
                    self._held_at(req, blob)
                    return "mounted"
                self.locations.forget(reg, blob.digest, repo)
            except (PermissionDenied, NotFound) as e:
                log.info("mount of %s from %s refused: %s", blob.digest, repo, e)
        async with self._blob_slots:
            return await self._send(req, blob, rep)

    async def _send(
        self, req: CopyRequest, blob: Blob, rep: _Reporter, session: Upload | None = None
    ) -> str:
        """Download the blob and upload it (into `session` when one is open already); the
        caller holds a blob slot."""
        self.downloads += 1
        # Streaming needs a source and a destination request at once; with one client for
        # both sides that could starve its concurrency limit, so spool instead, and upload
        # only after the download.
        if blob.size >= self.spool_threshold or req.src is req.dst:
            await self.mover.spooled(
                req.src,
                req.src_repo,
                req.dst,
                req.dst_repo,
                blob,
                rep.add_bytes,
                overlap=req.src is not req.dst,
            )
        else:
            await self.mover.stream(
                req.src, req.src_repo, req.dst, req.dst_repo, blob, rep.add_bytes, session
            )
        self.sizes.add(blob.digest, blob.size)  # hashed and counted on the way
        self._held_at(req, blob)
        return "copied"

    async def _upload_unless_held(self, req: CopyRequest, blob: Blob, rep: _Reporter) -> str | None:
        """A blob nothing says the destination registry has (no known location: an initial
        sync's configs and layers): one POST asks for an upload session unless the repository
        holds the blob already, where a HEAD and then a POST would be two requests. None when
        the registry refused that request: the caller checks and places the blob as usual."""
        dst = req.dst
        async with self._blob_slots:
            try:
                session = await dst.start_upload_unless_held(req.dst_repo, blob.digest)
            except (PermissionDenied, NotFound, InvalidRequest) as e:
                log.info("upload probe for %s in %s refused: %s", blob.digest, req.dst_repo, e)
                return None
            if session is None:  # held already: as trusted as a skip after a HEAD
                known = self.sizes.get(blob.digest)
                if known is None:
                    known = await dst.blob_size(req.dst_repo, blob.digest)
                _check_held(req, blob, known)
                self.sizes.add(blob.digest, blob.size)
                self._held_at(req, blob)
                return "skipped"
            return await self._send(req, blob, rep, session)

    # -- manifests -------------------------------------------------------------------------

    async def _push_after(
        self,
        req: CopyRequest,
        m: Manifest,
        deps: list[asyncio.Task[None]],
        present: set[str],
        rep: _Reporter,
    ) -> None:
        for t in deps:
            await t
        if m.digest in present:
            rep.p.manifests_done += 1
            rep.emit()
            return
        await self._push(req, m, m.digest, rep, count=True)

    async def _push_image(self, req: CopyRequest, m: Manifest, ref: str, rep: _Reporter) -> None:
        """Push the top manifest. When the registry finds a blob missing that was skipped on
        recent sight (gone since: deleted, collected), those blobs are placed again, checked
        this time, and the manifest is pushed once more."""
        try:
            await self._push(req, m, ref, rep, count=True)
            return
        except RegistryError as e:
            if not rep.trusted or e.code not in BLOB_GONE_CODES:
                raise
            log.info("%s: a blob skipped on recent sight is gone (%s); checking again", ref, e)
        again, rep.trusted = rep.trusted, []
        self.recent.forget(req.dst.key, req.dst_repo, (b.digest for b in again))
        rep.p.blobs_skipped -= len(again)
        rep.p.bytes_skipped -= sum(b.size for b in again)
        await _all(self._blob(req, b, rep) for b in again)
        await self._push(req, m, ref, rep, count=True)

    async def _push(
        self, req: CopyRequest, m: Manifest, ref: str, rep: _Reporter, count: bool
    ) -> None:
        digest = await req.dst.put_manifest(req.dst_repo, ref, m.data, m.media_type)
        if digest != m.digest:
            raise RegistryError(0, "DIGEST_INVALID", f"destination stored {digest}, not {m.digest}")
        if count:
            rep.p.manifests_done += 1
            rep.emit()


async def _all(coros: Iterable[Coroutine[Any, Any, T]]) -> list[T]:
    """Run concurrently; results in order. On failure the rest are cancelled and the first
    error is raised as itself (callers expect registry_client errors, not groups)."""
    try:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(c) for c in coros]
    except BaseExceptionGroup as group:
        raise _first_error(group) from None
    return [t.result() for t in tasks]


def _check_held(req: CopyRequest, blob: Blob, held: int | None) -> None:
    """The destination's HEAD of a blob skipped or mounted must match the manifest's size."""
    if held != blob.size:
        raise DescriptorMismatch(
            f"the manifest of {req.src_repo}:{req.src_ref} says blob {blob.digest} is"
            f" {blob.size} bytes; {req.dst_repo} at the destination holds"
            f" {'none' if held is None else f'{held} bytes'}: nothing committed"
        )


def _check_manifest(where: str, entry: dict[str, Any], media_type: str, size: int) -> None:
    """An index entry's size and media type must match the manifest it names."""
    want_type = entry.get("mediaType")
    if entry.get("size") != size or (isinstance(want_type, str) and want_type != media_type):
        raise DescriptorMismatch(
            f"{where}: the index says {entry.get('digest')} is {want_type or 'a manifest'} of"
            f" {entry.get('size')} bytes; it is {media_type} of {size} bytes: nothing committed"
        )


# What a registry answers to a manifest naming a blob the repository lacks.
BLOB_GONE_CODES = frozenset({"MANIFEST_BLOB_UNKNOWN", "BLOB_UNKNOWN"})


def _first_error(group: BaseExceptionGroup) -> BaseException:
    """The first non-cancellation error inside (nested) exception groups."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            exc = _first_error(exc)
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    return group.exceptions[0]


def _validate(req: CopyRequest) -> None:
    for name in (req.src_repo, req.dst_repo):
        if not names.is_repository(name):
            raise InvalidReference(f"invalid repository name {name!r}")
    if not (names.is_tag(req.src_ref) or names.is_verifiable_digest(req.src_ref)):
        raise InvalidReference(f"invalid source reference {req.src_ref!r} (tag or sha256 digest)")
    if req.dst_tag and not names.is_tag(req.dst_tag):
        raise InvalidReference(f"invalid destination tag {req.dst_tag!r}")
    for kind in req.copy_referrers:
        if kind not in REFERRER_CHOICES:
            choices = ", ".join(REFERRER_CHOICES)
            raise InvalidReference(f"unknown referrer kind {kind!r} ({choices})")
    for p in req.platforms:
        parts = p.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise InvalidReference(f"invalid platform {p!r} (os/arch or os/arch/variant)")


def _json(m: Manifest) -> dict[str, Any]:
    try:
        doc = json.loads(m.data)
    except ValueError as e:
        raise UnsupportedManifest(f"manifest {m.digest} is not JSON") from e
    if not isinstance(doc, dict):
        raise UnsupportedManifest(f"manifest {m.digest} is not a JSON object")
    return doc


def _descriptor(d: Any, where: str) -> Blob:
    if not isinstance(d, dict) or not isinstance(d.get("digest"), str):
        raise UnsupportedManifest(f"bad descriptor in {where}")
    size = d.get("size")
    if not isinstance(size, int) or size < 0 or not names.is_verifiable_digest(d["digest"]):
        raise UnsupportedManifest(f"bad descriptor {d.get('digest')!r} in {where}")
    return Blob(d["digest"], size)


def _blobs_of(m: Manifest) -> list[Blob]:
    doc = _json(m)
    out: list[Blob] = []
    if "config" in doc:
        out.append(_descriptor(doc["config"], m.digest))
    for layer in doc.get("layers") or []:
        out.append(_descriptor(layer, m.digest))
    return out


def _index_entries(m: Manifest) -> list[dict[str, Any]]:
    entries = _json(m).get("manifests")
    if not isinstance(entries, list):
        raise UnsupportedManifest(f"index {m.digest} has no manifests list")
    for e in entries:
        _descriptor(e, m.digest)
    return entries


def _platform_of(entry: dict[str, Any]) -> str:
    return platform_string(entry.get("platform")) or "unknown"


def _matches(entry: dict[str, Any], wanted: list[str]) -> bool:
    return platform_matches(platform_string(entry.get("platform")), wanted)
