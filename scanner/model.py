"""Plain data the scanner produces: components, OS, vulnerability matches, counts."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Component:
    """A package found in an image (field names match policy_service ComponentFact)."""

    name: str
    version: str
    type: str
    licenses: tuple[str, ...] = ()
    purl: str = ""
    # Source package (deb/apk): vulnerability databases key distro advisories by it.
    source: str = ""
    source_version: str = ""

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.type, self.name, self.version)


@dataclass(frozen=True)
class OsInfo:
    id: str = ""
    version_id: str = ""
    pretty_name: str = ""
    version_codename: str = ""


@dataclass(frozen=True)
class VulnMatch:
    """One vulnerability affecting one component."""

    id: str
    component: str
    component_type: str
    installed_version: str
    aliases: tuple[str, ...] = ()
    fixed_version: str = ""
    score: float | None = None
    summary: str = ""


@dataclass
class Counts:
    critical: int = 0
    major: int = 0
    minor: int = 0
    all: int = 0


@dataclass
class ImageFacts:
    """Everything a scan learned about one image (a manifest or an index)."""

    digest: str
    repository: str = ""
    os: OsInfo = field(default_factory=OsInfo)
    components: list[Component] = field(default_factory=list)
    vulnerabilities: list[VulnMatch] = field(default_factory=list)
    counts: Counts = field(default_factory=Counts)
    platforms: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    size: int = 0
    sources: list[str] = field(default_factory=list)
    database_version: str = ""
    # When the vulnerability database was last updated at matching time (ISO; "" none):
    # a cached report is re-matched when the database's time differs.
    database_time: str = ""
    # When the vulnerability data used for this image was last updated (ISO; "" none): the
    # oldest of the sources its components need, "" when one of them has no records.
    vulnerability_data_time: str = ""
    # No package database was recognised in the layers (and no report was merged).
    components_unknown: bool = False
    # Vulnerabilities listed by imported or attached reports (kept apart from the DB's own
    # matches so a new database version can redo the matching without losing them).
    report_vulnerabilities: list[VulnMatch] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> ImageFacts:
        d = json.loads(text)
        return cls(
            digest=d["digest"],
            repository=d["repository"],
            os=OsInfo(**d["os"]),
            components=[_component(c) for c in d["components"]],
            vulnerabilities=[_vuln(v) for v in d["vulnerabilities"]],
            counts=Counts(**d["counts"]),
            platforms=list(d["platforms"]),
            labels=dict(d["labels"]),
            size=int(d["size"]),
            sources=list(d["sources"]),
            database_version=d["database_version"],
            database_time=d.get("database_time", ""),
            vulnerability_data_time=d.get("vulnerability_data_time", ""),
            # Rows saved before the field existed: no component found reads as unknown.
            components_unknown=bool(d.get("components_unknown", not d["components"])),
            report_vulnerabilities=[_vuln(v) for v in d["report_vulnerabilities"]],
        )


def _component(d: dict[str, Any]) -> Component:
    return Component(**{**d, "licenses": tuple(d["licenses"])})


def _vuln(d: dict[str, Any]) -> VulnMatch:
    return VulnMatch(**{**d, "aliases": tuple(d["aliases"])})
