"""ImageFacts (scanner dataclasses) to mirror.v1 messages: ScanReport and ImageFacts."""

from __future__ import annotations

from datetime import datetime

from google.protobuf import timestamp_pb2
from mirror.v1 import common_pb2, scan_pb2

from scanner.model import Component, Counts, ImageFacts, VulnMatch
from scanner.severity import bucket
from scanner.vulnsources import parse_time


def component_pb(c: Component) -> common_pb2.Component:
    return common_pb2.Component(
        name=c.name, version=c.version, type=c.type, licenses=list(c.licenses), purl=c.purl
    )


def counts_pb(c: Counts) -> common_pb2.VulnerabilityCounts:
    return common_pb2.VulnerabilityCounts(
        critical=c.critical, major=c.major, minor=c.minor, all=c.all
    )


def vulnerability_pb(m: VulnMatch) -> scan_pb2.Vulnerability:
    return scan_pb2.Vulnerability(
        id=m.id,
        aliases=list(m.aliases),
        component=m.component,
        component_type=m.component_type,
        installed_version=m.installed_version,
        fixed_version=m.fixed_version,
        score=m.score or 0.0,
        bucket=bucket(m.score),  # type: ignore[arg-type]
        summary=m.summary,
    )


def _timestamp(iso: str) -> timestamp_pb2.Timestamp | None:
    if not iso:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(parse_time(iso))
    return ts


def report_pb(facts: ImageFacts, scanned_at: datetime) -> scan_pb2.ScanReport:
    """The ScanReport of an image's facts (whole: scanner.bounds cuts it to size)."""
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(scanned_at)
    return scan_pb2.ScanReport(
        digest=facts.digest,
        repository=facts.repository,
        os=scan_pb2.OperatingSystem(
            id=facts.os.id, version_id=facts.os.version_id, pretty_name=facts.os.pretty_name
        ),
        components=[component_pb(c) for c in sorted(facts.components, key=lambda c: c.key)],
        vulnerabilities=[
            vulnerability_pb(m)
            for m in sorted(facts.vulnerabilities, key=lambda m: (-(m.score or 0), m.id))
        ],
        counts=counts_pb(facts.counts),
        scan_time=ts,
        database_version=facts.database_version,
        sources=facts.sources,
        platforms=facts.platforms,
        size_bytes=facts.size,
        labels=facts.labels,
        components_unknown=facts.components_unknown,
        vulnerability_data_time=_timestamp(facts.vulnerability_data_time),
    )


def image_facts_pb(facts: ImageFacts, tag: str = "") -> common_pb2.ImageFacts:
    """mirror.v1.ImageFacts (what rules look at) from a scan."""
    return common_pb2.ImageFacts(
        repository=facts.repository,
        tag=tag,
        digest=facts.digest,
        components=[component_pb(c) for c in sorted(facts.components, key=lambda c: c.key)],
        vulnerabilities=counts_pb(facts.counts),
        labels=facts.labels,
        platforms=facts.platforms,
        size_bytes=facts.size,
        vulnerability_data_time=_timestamp(facts.vulnerability_data_time),
        components_unknown=facts.components_unknown,
    )
