"""Reports made by other scanners: CycloneDX JSON, SPDX JSON, Trivy JSON, and DSSE/in-toto.

Each parser returns ReportFacts: components (licenses normalized), the vulnerabilities the
report itself lists (scored from its ratings), and the OS when the report says.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

from packageurl import PackageURL

from scanner.errors import ScanError
from scanner.licenses import normalize, normalize_all
from scanner.model import Component, OsInfo, VulnMatch
from scanner.severity import score_qualitative, score_vector

FORMATS = ("cyclonedx", "spdx", "trivy")
CYCLONEDX_PREDICATES = ("https://cyclonedx.org/bom",)
SPDX_PREDICATES = ("https://spdx.dev/Document",)
# purl types to the component types the rest of the system uses.
_PURL_TYPES = {"deb": "deb", "apk": "apk", "pypi": "pypi", "npm": "npm"}
_TRIVY_TYPES = {
    "debian": "deb", "ubuntu": "deb", "alpine": "apk", "python-pkg": "pypi", "pip": "pypi",
    "pipenv": "pypi", "poetry": "pypi", "node-pkg": "npm", "npm": "npm", "yarn": "npm",
}


@dataclass
class ReportFacts:
    format: str
    components: list[Component] = field(default_factory=list)
    vulnerabilities: list[VulnMatch] = field(default_factory=list)
    os: OsInfo = field(default_factory=OsInfo)


def _bad(message: str) -> ScanError:
    return ScanError("REPORT_INVALID", message)


def load_json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deeply
        raise _bad(f"report is not JSON: {exc}") from None


def detect_format(doc: Any) -> str:
    """'cyclonedx', 'spdx' or 'trivy' from the document's shape."""
    if isinstance(doc, dict):
        if doc.get("bomFormat") == "CycloneDX":
            return "cyclonedx"
        if "spdxVersion" in doc:
            return "spdx"
        if "SchemaVersion" in doc and ("Results" in doc or "ArtifactName" in doc):
            return "trivy"
    raise _bad("not a CycloneDX, SPDX or Trivy JSON report")


def parse_report(data: bytes, fmt: str = "") -> ReportFacts:
    """Parse a report; `fmt` empty means detect. ScanError(REPORT_INVALID) on bad input."""
    doc = load_json(data)
    return parse_document(doc, fmt)


def parse_document(doc: Any, fmt: str = "") -> ReportFacts:
    fmt = fmt.lower() or detect_format(doc)
    if fmt not in FORMATS:
        raise _bad(f"unknown report format {fmt!r}; use one of {', '.join(FORMATS)}")
    if not isinstance(doc, dict):
        raise _bad(f"a {fmt} report must be a JSON object")
    if fmt == "cyclonedx":
        return _cyclonedx(doc)
    if fmt == "spdx":
        return _spdx(doc)
    return _trivy(doc)


def _component_from_purl(name: str, version: str, purl: str, licenses: tuple[str, ...],
                         default_type: str = "") -> Component:
    ctype = default_type
    source = ""
    if purl:
        try:
            p = PackageURL.from_string(purl)
            ctype = _PURL_TYPES.get(p.type, p.type)
            name = name or p.name
            version = version or (p.version or "")
            quals = p.qualifiers if isinstance(p.qualifiers, dict) else {}
            upstream = str(quals.get("upstream", ""))
            source = upstream.split("@")[0] if upstream else ""
        except ValueError:
            pass
    return Component(name, version, ctype or "unknown", licenses, purl, source, "")


def _cdx_licenses(entries: Any) -> tuple[str, ...]:
    raws: list[str] = []
    for entry in entries or []:
        if not isinstance(entry, dict):
            continue
        if isinstance(entry.get("expression"), str):
            raws.append(entry["expression"])
        lic = entry.get("license")
        if isinstance(lic, dict):
            value = lic.get("id") or lic.get("name")
            if isinstance(value, str):
                raws.append(value)
    return normalize_all(raws)


def _cdx_rating(r: dict[str, Any]) -> float | None:
    if isinstance(r.get("score"), (int, float)):
        return float(r["score"])
    if isinstance(r.get("vector"), str) and (s := score_vector(r["vector"])) is not None:
        return s
    if isinstance(r.get("severity"), str):
        return score_qualitative(r["severity"])
    return None


def _cdx_score(ratings: Any) -> float | None:
    scores = [s for r in ratings or [] if isinstance(r, dict) and (s := _cdx_rating(r)) is not None]
    return max(scores) if scores else None


def _cyclonedx(doc: dict[str, Any]) -> ReportFacts:
    out = ReportFacts("cyclonedx")
    by_ref: dict[str, Component] = {}
    stack = list(doc.get("components") or [])
    while stack:
        c = stack.pop(0)
        if not isinstance(c, dict):
            continue
        stack.extend(c.get("components") or [])
        if c.get("type") == "operating-system":
            out.os = OsInfo(id=str(c.get("name", "")), version_id=str(c.get("version", "")))
            continue
        if not isinstance(c.get("name"), str):
            continue
        comp = _component_from_purl(
            c["name"], str(c.get("version", "")), str(c.get("purl", "")),
            _cdx_licenses(c.get("licenses")), "",
        )
        out.components.append(comp)
        if isinstance(c.get("bom-ref"), str):
            by_ref[c["bom-ref"]] = comp
    for v in doc.get("vulnerabilities") or []:
        if not isinstance(v, dict) or not isinstance(v.get("id"), str):
            continue
        score = _cdx_score(v.get("ratings"))
        aliases = tuple(
            r["id"] for r in v.get("references") or []
            if isinstance(r, dict) and isinstance(r.get("id"), str)
        )
        for aff in v.get("affects") or []:
            hit = by_ref.get(aff.get("ref", "")) if isinstance(aff, dict) else None
            if hit is None:
                continue
            comp = hit
            out.vulnerabilities.append(VulnMatch(
                id=v["id"], component=comp.name, component_type=comp.type,
                installed_version=comp.version, aliases=aliases, score=score,
                summary=str(v.get("description", ""))[:200],
            ))
    return out


def _spdx(doc: dict[str, Any]) -> ReportFacts:
    out = ReportFacts("spdx")
    for p in doc.get("packages") or []:
        if not isinstance(p, dict) or not isinstance(p.get("name"), str):
            continue
        purl = ""
        for ref in p.get("externalRefs") or []:
            if isinstance(ref, dict) and ref.get("referenceType") == "purl":
                purl = str(ref.get("referenceLocator", ""))
        if not purl and p.get("primaryPackagePurpose") in ("CONTAINER", "OPERATING-SYSTEM"):
            continue
        raws = [
            str(p[k]) for k in ("licenseConcluded", "licenseDeclared")
            if isinstance(p.get(k), str) and p[k] not in ("NOASSERTION", "NONE")
        ]
        licenses: list[str] = []
        for raw in raws[:1]:  # concluded wins over declared
            licenses.extend(normalize(raw))
        out.components.append(_component_from_purl(
            p["name"], str(p.get("versionInfo", "")), purl, tuple(licenses),
        ))
    return out


def _trivy(doc: dict[str, Any]) -> ReportFacts:
    out = ReportFacts("trivy")
    meta = doc.get("Metadata") or {}
    os_meta = meta.get("OS") if isinstance(meta, dict) else None
    if isinstance(os_meta, dict):
        out.os = OsInfo(id=str(os_meta.get("Family", "")), version_id=str(os_meta.get("Name", "")))
    for res in doc.get("Results") or []:
        if not isinstance(res, dict):
            continue
        ctype = _TRIVY_TYPES.get(str(res.get("Type", "")), str(res.get("Type", "")) or "unknown")
        for p in res.get("Packages") or []:
            if not isinstance(p, dict) or not isinstance(p.get("Name"), str):
                continue
            ident: dict[str, Any] = (
                p["Identifier"] if isinstance(p.get("Identifier"), dict) else {}
            )
            comp = _component_from_purl(
                p["Name"], str(p.get("Version", "")), str(ident.get("PURL", "")),
                normalize_all([str(x) for x in p.get("Licenses") or []]), ctype,
            )
            if p.get("SrcName"):
                comp = Component(comp.name, comp.version, comp.type, comp.licenses, comp.purl,
                                 str(p["SrcName"]), str(p.get("SrcVersion", "")))
            out.components.append(comp)
        for v in res.get("Vulnerabilities") or []:
            if not isinstance(v, dict) or not isinstance(v.get("VulnerabilityID"), str):
                continue
            out.vulnerabilities.append(VulnMatch(
                id=v["VulnerabilityID"], component=str(v.get("PkgName", "")),
                component_type=ctype, installed_version=str(v.get("InstalledVersion", "")),
                fixed_version=str(v.get("FixedVersion", "")), score=_trivy_score(v),
                summary=str(v.get("Title", ""))[:200],
            ))
    return out


def _trivy_score(v: dict[str, Any]) -> float | None:
    scores: list[float] = []
    for entry in (v.get("CVSS") or {}).values():
        if not isinstance(entry, dict):
            continue
        for key in ("V40Score", "V3Score", "V2Score"):
            if isinstance(entry.get(key), (int, float)):
                scores.append(float(entry[key]))
                break
    if scores:
        return max(scores)
    sev = v.get("Severity")
    return score_qualitative(sev) if isinstance(sev, str) else None


def parse_attestation(data: bytes) -> ReportFacts | None:
    """The CycloneDX/SPDX predicate of a DSSE envelope (in-toto statement), bare or in a
    sigstore bundle; None otherwise."""
    env = load_json(data)
    # A sigstore bundle (cosign's OCI 1.1 attestations) carries the envelope as dsseEnvelope.
    if isinstance(env, dict) and isinstance(env.get("dsseEnvelope"), dict):
        env = env["dsseEnvelope"]
    if not isinstance(env, dict) or not isinstance(env.get("payload"), str):
        raise _bad("attestation is not a DSSE envelope")
    try:
        statement = json.loads(base64.b64decode(env["payload"]))
    except (ValueError, TypeError, RecursionError) as exc:
        raise _bad(f"DSSE payload is not base64 JSON: {exc}") from None
    if not isinstance(statement, dict):
        raise _bad("in-toto statement must be an object")
    ptype = str(statement.get("predicateType", ""))
    predicate = statement.get("predicate")
    # cosign wraps some predicates as {"Data": "<json string>"}
    if isinstance(predicate, dict) and isinstance(predicate.get("Data"), str):
        predicate = load_json(predicate["Data"].encode())
    if any(ptype.startswith(p) for p in CYCLONEDX_PREDICATES):
        return parse_document(predicate, "cyclonedx")
    if any(ptype.startswith(p) for p in SPDX_PREDICATES):
        return parse_document(predicate, "spdx")
    return None
