"""Gather only the image facts the applicable policies need (reference, manifest, scan)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

import grpc
from mirror.v1 import common_pb2, scan_pb2, scan_pb2_grpc

from gateway.signatures import find_signatures
from registry_client import Manifest, mediatypes
from registry_client import errors as rc_errors
from registry_client.images import image_size, is_attestation_entry, platform_string
from registry_client.referrers import descriptor_of, subject_of
from registry_client.resolver import EndpointResolver
from servicekit.retry import message_too_large, transient_rpc_error

log = logging.getLogger("gateway.facts")

FactKind = common_pb2.FactKind
SCAN_KINDS = frozenset(
    {FactKind.FACT_KIND_COMPONENTS, FactKind.FACT_KIND_LICENSES, FactKind.FACT_KIND_VULNERABILITIES}
)
MAX_CONFIG_BYTES = 4 << 20


@dataclass(frozen=True)
class Gathered:
    facts: common_pb2.ImageFacts
    # Why some facts are missing, for the run's message.
    notes: tuple[str, ...] = ()
    # The scan failed for good (too big, unreadable image): runs needing it fail, saying why.
    scan_failed: str = ""


@dataclass
class _Notes:
    """What went wrong while gathering: remarks for the run, and a scan failed for good."""

    items: list[str] = field(default_factory=list)
    scan_failed: str = ""


@dataclass(frozen=True)
class ImageRef:
    endpoint: str
    repository: str
    tag: str
    digest: str


@dataclass(frozen=True)
class Attachment:
    """A manifest with a `subject`: an artifact attached to that image (a referrer: an SBOM,
    a signature...), not an image of its own."""

    subject: str
    # Its artifactType (else its config's media type), as the referrers index lists it.
    artifact_type: str = ""
    annotations: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


def attachment_of(m: Manifest) -> Attachment | None:
    """The manifest's subject, or None when it names none (an image, an index)."""
    subject = subject_of(m.data)
    if subject is None:
        return None
    desc = descriptor_of(m.data, m.media_type, m.digest)
    annotations = desc.get("annotations")
    return Attachment(
        subject=subject,
        artifact_type=str(desc.get("artifactType", "")),
        annotations=dict(annotations) if isinstance(annotations, dict) else {},
    )


class FactGatherer:
    """Builds ImageFacts from the event, the registry (via a resolver) and the scanner."""

    def __init__(
        self,
        resolver: EndpointResolver | None,
        scanner: scan_pb2_grpc.ScanServiceStub | None,
        scan_timeout_s: float = 300.0,
    ) -> None:
        self.resolver = resolver
        self.scanner = scanner
        self.scan_timeout_s = scan_timeout_s

    async def gather(self, ref: ImageRef, kinds: set[int], rescan: bool = False) -> Gathered:
        """Facts for `kinds` (`present` lists what could actually be gathered) and why some
        could not be gathered (a failed scan...).

        `rescan`: the scanner scans the image again instead of answering its cached report
        (an SBOM or attestation the scanner reads arrived after that report was made).
        """
        notes = _Notes()
        facts = await self._gather(ref, kinds, notes, rescan)
        return Gathered(facts, tuple(notes.items), notes.scan_failed)

    async def _gather(
        self, ref: ImageRef, kinds: set[int], notes: _Notes, rescan: bool
    ) -> common_pb2.ImageFacts:
        facts = common_pb2.ImageFacts(repository=ref.repository, tag=ref.tag, digest=ref.digest)
        present = {FactKind.FACT_KIND_REFERENCE}
        image_ref = ref.digest or ref.tag
        if kinds & SCAN_KINDS and self.scanner is not None:
            report = await self._scan(ref, image_ref, notes, rescan)
            if report is not None:
                _apply_report(facts, report)
                present |= {*SCAN_KINDS, FactKind.FACT_KIND_MANIFEST}
        elif kinds & SCAN_KINDS:
            notes.items.append("no scanner is configured")
        if FactKind.FACT_KIND_MANIFEST in kinds and FactKind.FACT_KIND_MANIFEST not in present:
            if self.resolver is not None:
                await self._manifest_facts(ref, image_ref, facts)
                present.add(FactKind.FACT_KIND_MANIFEST)
            elif self.scanner is not None:
                report = await self._scan(ref, image_ref, notes, rescan)
                if report is not None:
                    _apply_report(facts, report)
                    present |= {*SCAN_KINDS, FactKind.FACT_KIND_MANIFEST}
        if FactKind.FACT_KIND_SIGNATURES in kinds and self.resolver is not None:
            async with self.resolver.client_for(ref.endpoint) as rc:
                digest = facts.digest or ref.digest
                facts.signatures.extend(await find_signatures(rc, ref.repository, digest))
            present.add(FactKind.FACT_KIND_SIGNATURES)
        facts.present.extend(sorted(present))
        return facts

    async def resolve(self, ref: ImageRef) -> tuple[str, Attachment | None]:
        """The tag's current digest ('' without registry access) and, when the manifest has a
        `subject`, what it is attached to. One GET, as many requests as a HEAD (the body
        says whether it is an image). Raises registry_client's NotFound when the tag is gone."""
        if self.resolver is None:
            return "", None
        async with self.resolver.client_for(ref.endpoint) as rc:
            m = await rc.get_manifest(ref.repository, ref.tag)
        return m.digest, attachment_of(m)

    async def attachment(self, endpoint: str, repository: str, digest: str) -> Attachment | None:
        """What the manifest `digest` is attached to (None: it names no subject, or it is
        gone, or there is no registry access)."""
        if self.resolver is None:
            return None
        try:
            async with self.resolver.client_for(endpoint) as rc:
                m = await rc.get_manifest(repository, digest)
        except rc_errors.NotFound:
            return None
        return attachment_of(m)

    async def _scan(
        self, ref: ImageRef, image_ref: str, notes: _Notes, rescan: bool = False
    ) -> scan_pb2.ScanReport | None:
        assert self.scanner is not None
        try:
            return await self.scanner.ScanImage(
                scan_pb2.ScanImageRequest(
                    image=common_pb2.ImageLocation(
                        endpoint=ref.endpoint, repository=ref.repository, reference=image_ref
                    ),
                    force=rescan,
                ),
                timeout=self.scan_timeout_s,
            )
        except grpc.aio.AioRpcError as err:
            if transient_rpc_error(err):
                raise
            # A scan that cannot succeed: the policies needing it are blocked, saying why.
            detail = f"{err.code().name}: {(err.details() or '')[:300]}"
            if message_too_large(err):
                notes.items.append(f"the scan report is too large: {detail}")
            else:
                notes.scan_failed = f"the scan failed: {detail}"
            log.warning(
                "scan of %s/%s@%s failed: %s %s",
                ref.endpoint,
                ref.repository,
                image_ref,
                err.code().name,
                err.details(),
            )
            return None

    async def _manifest_facts(
        self, ref: ImageRef, image_ref: str, facts: common_pb2.ImageFacts
    ) -> None:
        assert self.resolver is not None
        async with self.resolver.client_for(ref.endpoint) as rc:
            top = await rc.get_manifest(ref.repository, image_ref)
            doc = json.loads(top.data)
            if not facts.digest:
                facts.digest = top.digest
            images: list[dict[str, Any]] = []
            if mediatypes.is_index(top.media_type):
                for m in doc.get("manifests", []):
                    if is_attestation_entry(m):
                        continue
                    facts.platforms.append(platform_string(m.get("platform")))
                    child = await rc.get_manifest(ref.repository, m["digest"])
                    images.append(json.loads(child.data))
            else:
                images.append(doc)
            size = 0
            for i, img in enumerate(images):
                size += image_size(img)
                cfg_desc = img.get("config") or {}
                if i == 0 and cfg_desc.get("digest"):
                    cfg = await _read_json_blob(rc, ref.repository, cfg_desc["digest"])
                    labels = (cfg.get("config") or {}).get("Labels") or {}
                    facts.labels.update({str(k): str(v) for k, v in labels.items()})
                    if not mediatypes.is_index(top.media_type):
                        facts.platforms.append(platform_string(cfg))
            facts.size_bytes = size


async def _read_json_blob(rc: Any, repo: str, digest: str) -> dict[str, Any]:
    buf = bytearray()
    async with rc.open_blob(repo, digest) as body:
        async for chunk in body.iter_chunks():
            buf += chunk
            if len(buf) > MAX_CONFIG_BYTES:
                raise ValueError(f"image config {digest} is larger than {MAX_CONFIG_BYTES} bytes")
    doc = json.loads(bytes(buf))
    return doc if isinstance(doc, dict) else {}


def _apply_report(facts: common_pb2.ImageFacts, report: scan_pb2.ScanReport) -> None:
    facts.components.extend(report.components)
    facts.vulnerabilities.CopyFrom(report.counts)
    facts.labels.update(dict(report.labels))
    del facts.platforms[:]
    facts.platforms.extend(report.platforms)
    facts.size_bytes = report.size_bytes
    facts.components_unknown = report.components_unknown
    if report.HasField("vulnerability_data_time"):
        facts.vulnerability_data_time.CopyFrom(report.vulnerability_data_time)
    if not facts.digest and report.digest:
        facts.digest = report.digest

