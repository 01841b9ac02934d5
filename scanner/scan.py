"""Orchestration: manifest -> config -> layers (streamed) -> components -> vulnerabilities.

`scan_image(rc, repository, reference)` is the one call: it returns ImageFacts (components,
OS, counts, platforms, labels, size) for an image manifest or an index (the union over its
platforms' images).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Protocol

from registry_client import errors as registry_errors
from registry_client import mediatypes
from registry_client.images import image_size, platform_string
from registry_client.referrers import descriptor_of, referrers_of, subject_of
from scanner import parsers
from scanner.bounds import RecordBudget
from scanner.errors import ScanError
from scanner.layers import LayerReader, Limits, read_layer_chunks
from scanner.model import Component, ImageFacts, OsInfo
from scanner.reports import ReportFacts, parse_attestation, parse_report
from scanner.severity import count
from scanner.vulndb import VulnDB
from servicekit.retry import is_retryable
from transfer_service.engine.referrers import kind_of

log = logging.getLogger("scanner.scan")

_CONFIG_TYPES = (mediatypes.OCI_CONFIG, mediatypes.DOCKER_CONFIG)
_DSSE = "application/vnd.dsse.envelope.v1+json"
# The referrer kinds (transfer_service.engine.referrers.kind_of) that hold reports.
_REPORT_KINDS = ("sbom", "attestation")
# OCI referrers read per image, and layers read per attached artifact (each a request).
MAX_REFERRERS = 8
MAX_LAYERS = 4


class RegistryClientLike(Protocol):
    """The part of registry_client.RegistryClient the scanner uses (also what
    transfer_service.remote's client has). Referrers are listed with `list_referrers` where the
    client has it (registry_client.referrers.referrers_of), else through `get_manifest`."""

    async def get_manifest(self, repo: str, ref: str) -> Any: ...
    async def head_manifest(self, repo: str, ref: str) -> Any: ...
    def open_blob(self, repo: str, digest: str, offset: int = 0) -> Any: ...


async def read_small_blob(rc: RegistryClientLike, repo: str, digest: str, limit: int) -> bytes:
    """A whole blob that must stay under `limit` bytes (configs, SBOMs)."""
    buf = bytearray()
    async with rc.open_blob(repo, digest) as body:
        async for chunk in body.iter_chunks():
            buf += chunk
            if len(buf) > limit:
                raise ScanError("BLOB_TOO_LARGE", f"blob {digest} is over {limit} bytes")
    return bytes(buf)


def _json(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deeply
        raise ScanError("MANIFEST_INVALID", f"{what} is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ScanError("MANIFEST_INVALID", f"{what} is not a JSON object")
    return doc


async def _scan_image_manifest(
    rc: RegistryClientLike, repo: str, digest: str, manifest: dict[str, Any], limits: Limits
) -> ImageFacts:
    config = manifest.get("config") or {}
    if config.get("mediaType") not in _CONFIG_TYPES:
        raise ScanError(
            "NOT_AN_IMAGE", f"{digest} is an artifact ({config.get('mediaType')}), not an image"
        )
    cfg = _json(await read_small_blob(rc, repo, config["digest"], limits.max_blob_bytes),
                "image config")
    facts = ImageFacts(digest=digest, repository=repo, sources=["layers"])
    labels = (cfg.get("config") or {}).get("Labels") or {}
    facts.labels = {str(k): str(v) for k, v in labels.items()}
    platform = platform_string(cfg)
    facts.platforms = [platform] if platform else []
    layers = manifest.get("layers") or []
    facts.size = image_size(manifest)
    reader = LayerReader(parsers.SELECTOR, limits)
    for layer in layers:
        async with rc.open_blob(repo, layer["digest"]) as body:
            await read_layer_chunks(reader, body.iter_chunks(), layer["digest"])
    # In a worker thread: tens of thousands of records take seconds, which must not stall
    # every other RPC and the webhook on the event loop.
    facts.os, facts.components, facts.components_unknown = await asyncio.to_thread(
        _extract, reader, limits)
    return facts


def _extract(reader: LayerReader, limits: Limits) -> tuple[OsInfo, list[Component], bool]:
    """(OS, components, components unknown) of the merged tree."""
    os_info, components = parsers.extract(reader.tree, RecordBudget(limits.max_package_records))
    return os_info, components, not parsers.recognised(reader.tree)


def _union(index_digest: str, repo: str, children: list[ImageFacts]) -> ImageFacts:
    out = ImageFacts(digest=index_digest, repository=repo, sources=["layers"])
    # One platform whose packages are unknown makes the index's components unknown.
    out.components_unknown = not children or any(c.components_unknown for c in children)
    seen: set[tuple[str, str, str]] = set()
    for child in children:
        if not out.os.id:
            out.os = child.os
        for c in child.components:
            if c.key not in seen:
                seen.add(c.key)
                out.components.append(c)
        out.platforms.extend(p for p in child.platforms if p not in out.platforms)
        for k, v in child.labels.items():
            out.labels.setdefault(k, v)
        out.size += child.size
    return out


def _is_attestation(entry: dict[str, Any]) -> bool:
    annotations = entry.get("annotations") or {}
    platform = entry.get("platform") or {}
    return (
        annotations.get("vnd.docker.reference.type") == "attestation-manifest"
        or platform.get("os") == "unknown"
    )


async def collect_facts(
    rc: RegistryClientLike, repository: str, reference: str, *, limits: Limits | None = None
) -> ImageFacts:
    """Components, OS, platforms, labels and size of an image or index (no vulnerabilities)."""
    limits = limits or Limits()
    m = await rc.get_manifest(repository, reference)
    doc = _json(m.data, "manifest")
    if mediatypes.is_index(m.media_type):
        children: list[ImageFacts] = []
        for entry in doc.get("manifests") or []:
            if _is_attestation(entry) or not mediatypes.is_image(str(entry.get("mediaType"))):
                continue
            child = await rc.get_manifest(repository, entry["digest"])
            children.append(await _scan_image_manifest(
                rc, repository, child.digest, _json(child.data, "manifest"), limits))
        return _union(m.digest, repository, children)
    if not mediatypes.is_image(m.media_type):
        raise ScanError("NOT_AN_IMAGE", f"unsupported manifest type {m.media_type}")
    return await _scan_image_manifest(rc, repository, m.digest, doc, limits)


async def attached_reports(
    rc: RegistryClientLike, repository: str, digest: str, limits: Limits
) -> list[tuple[str, ReportFacts]]:
    """SBOMs and attestations attached to the image: under cosign's tags (sha256-<hex>.sbom /
    .att), then its OCI referrers of those kinds (a manifest whose `subject` is the image).

    Unreadable artifacts are logged and skipped: they must not make the image unscannable.
    """
    out: list[tuple[str, ReportFacts]] = []
    algo, _, hexpart = digest.partition(":")
    for suffix in ("sbom", "att"):
        tag = f"{algo}-{hexpart}.{suffix}"
        try:
            # One GET: absent (the usual case) is one 404, as a HEAD would be.
            art = await rc.get_manifest(repository, tag)
            kind = "attestation" if suffix == "att" else "sbom"
            out += await _artifact_reports(rc, repository, art, kind, limits)
        except registry_errors.NotFound:
            continue
        except ScanError as err:
            log.warning("ignoring attached %s of %s: %s", suffix, digest, err)
    return out + await _referrer_reports(rc, repository, digest, limits)


async def _referrer_reports(
    rc: RegistryClientLike, repository: str, digest: str, limits: Limits
) -> list[tuple[str, ReportFacts]]:
    """The reports of the image's OCI referrers that are SBOMs or attestations (the engine's
    classification), at most MAX_REFERRERS of them read.

    Listed through the referrers API where the client can ask it and the registry has it,
    else through the `sha256-<hex>` index tag (2.8.2 without referrers: one 404, or two
    with the API's own 404 first)."""
    try:
        listed = await referrers_of(rc, repository, digest)
    except registry_errors.RegistryError as err:
        if is_retryable(err):
            raise
        # An odd answer to the listing: the tag scheme's reports still count.
        log.warning("cannot list the referrers of %s@%s: %s", repository, digest, err)
        return []
    wanted = [r for r in listed if kind_of(r.artifact_type, r.annotations) in _REPORT_KINDS]
    if len(wanted) > MAX_REFERRERS:
        log.warning("%s@%s has %d SBOM/attestation referrers: only the first %d read",
                    repository, digest, len(wanted), MAX_REFERRERS)
    out: list[tuple[str, ReportFacts]] = []
    for r in wanted[:MAX_REFERRERS]:
        try:
            art = await rc.get_manifest(repository, r.digest)  # verified by digest
            doc = _json(art.data, "referrer manifest")
            # The manifest itself must name the image (not only the listing), and says what
            # it is.
            if subject_of(art.data) != digest:
                raise ScanError("MANIFEST_INVALID", f"its subject is not {digest}")
            desc = descriptor_of(art.data, art.media_type, art.digest)
            annotations = doc.get("annotations")
            kind = kind_of(str(desc.get("artifactType", "")),
                           annotations if isinstance(annotations, dict) else None)
            if kind in _REPORT_KINDS:
                out += await _artifact_reports(rc, repository, art, kind, limits, MAX_LAYERS)
        except registry_errors.RegistryError as err:
            if is_retryable(err):
                raise
            log.warning("ignoring referrer %s of %s: %s", r.digest, digest, err)
        except ScanError as err:
            log.warning("ignoring referrer %s of %s: %s", r.digest, digest, err)
    return out


async def _artifact_reports(
    rc: RegistryClientLike, repository: str, art: Any, kind: str, limits: Limits,
    max_layers: int | None = None,
) -> list[tuple[str, ReportFacts]]:
    """The reports in the layers of one SBOM (`kind` "sbom") or attestation manifest (the
    first `max_layers`); a layer that cannot be read or parsed is logged and skipped."""
    out: list[tuple[str, ReportFacts]] = []
    layers = _json(art.data, "attached manifest").get("layers") or []
    for layer in layers[:max_layers] if isinstance(layers, list) else []:
        if not isinstance(layer, dict):
            continue
        blob = str(layer.get("digest", ""))
        try:
            size = layer.get("size")
            if isinstance(size, int) and size > limits.max_blob_bytes:  # not even fetched
                raise ScanError("BLOB_TOO_LARGE",
                                f"blob {blob} is over {limits.max_blob_bytes} bytes")
            data = await read_small_blob(rc, repository, blob, limits.max_blob_bytes)
            media = str(layer.get("mediaType", ""))
            facts = (parse_attestation(data) if media == _DSSE or kind == "attestation"
                     else parse_report(data))
        except registry_errors.RegistryError as err:
            if is_retryable(err):
                raise
            log.warning("ignoring layer %s of %s: %s", blob, art.digest, err)
            continue
        except ScanError as err:
            log.warning("ignoring layer %s of %s: %s", blob, art.digest, err)
            continue
        if facts is not None:
            out.append((f"referrer:{art.digest}", facts))
    return out


def merge_report(facts: ImageFacts, source: str, report: ReportFacts) -> None:
    """Add a report's components (deduplicated) and its own vulnerabilities to `facts`.

    A report lists the image's components, so after it they are known (possibly none).
    """
    facts.components_unknown = False
    seen = {c.key for c in facts.components}
    for c in report.components:
        if c.key not in seen:
            seen.add(c.key)
            facts.components.append(c)
    if not facts.os.id and report.os.id:
        facts.os = report.os
    have = {(m.id, m.component, m.installed_version) for m in facts.report_vulnerabilities}
    for m in report.vulnerabilities:
        if (m.id, m.component, m.installed_version) not in have:
            have.add((m.id, m.component, m.installed_version))
            facts.report_vulnerabilities.append(m)
    if source not in facts.sources:
        facts.sources.append(source)


def apply_vulnerabilities(facts: ImageFacts, vulndb: VulnDB | None) -> ImageFacts:
    """Match components against the DB, add reports' own findings, count by bucket.

    The database's version and times are read before matching: an import racing with the
    match leaves the facts marked older, so the next read matches again rather than claim
    data the match did not use.
    """
    version = vulndb.version if vulndb is not None else ""
    updated = vulndb.update_time if vulndb is not None else None
    data_time = vulndb.data_time(facts.components, facts.os) if vulndb is not None else None
    matches = vulndb.match(facts.components, facts.os) if vulndb is not None else []
    known = {(m.id, m.component, m.installed_version) for m in matches}
    for m in facts.report_vulnerabilities:
        if (m.id, m.component, m.installed_version) not in known:
            known.add((m.id, m.component, m.installed_version))
            matches.append(m)
    facts.vulnerabilities = matches
    facts.counts = count(matches)
    facts.database_version = version
    facts.database_time = updated.isoformat() if updated is not None else ""
    facts.vulnerability_data_time = data_time.isoformat() if data_time is not None else ""
    return facts


async def scan_image(
    rc: RegistryClientLike,
    repository: str,
    reference: str,
    *,
    vulndb: VulnDB | None = None,
    limits: Limits | None = None,
    attached: bool = True,
) -> ImageFacts:
    """Scan an image (or index) in a registry: facts plus vulnerabilities and counts.

    Raises ScanError for images refused (limits, bad layers) and registry_client errors.
    """
    limits = limits or Limits()
    facts = await collect_facts(rc, repository, reference, limits=limits)
    if attached:
        for source, report in await attached_reports(rc, repository, facts.digest, limits):
            merge_report(facts, source, report)
    return apply_vulnerabilities(facts, vulndb)


def components_of(facts: ImageFacts) -> list[Component]:
    """Components sorted by (type, name, version) for stable output."""
    return sorted(facts.components, key=lambda c: c.key)


__all__ = ["ImageFacts", "OsInfo", "apply_vulnerabilities", "collect_facts", "scan_image"]
