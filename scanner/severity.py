"""Severity: CVSS base scores (cvss package) and DTR's buckets."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from cvss import CVSS2, CVSS3, CVSS4
from cvss.exceptions import CVSSError
from mirror.v1 import scan_pb2

from scanner.model import Counts, VulnMatch

Bucket = scan_pb2.Vulnerability.Bucket

# A record's own rating (GHSA "database_specific.severity", Trivy "Severity") when it has no
# vector: a representative score inside the matching CVSS v3 qualitative range.
QUALITATIVE_SCORES = {
    "CRITICAL": 9.5,
    "HIGH": 7.5,
    "MODERATE": 5.5,
    "MEDIUM": 5.5,
    "LOW": 2.0,
    "NEGLIGIBLE": 0.0,
    "NONE": 0.0,
}


def score_vector(vector: str) -> float | None:
    """Base score of a CVSS v2/v3.x/v4 vector; None when it does not parse."""
    vector = vector.strip()
    try:
        if vector.startswith("CVSS:4"):
            return float(CVSS4(vector).base_score)
        if vector.startswith("CVSS:3"):
            return float(CVSS3(vector).base_score)
        if vector:
            return float(CVSS2(vector).base_score)
    except (CVSSError, ValueError, KeyError, IndexError):
        return None
    return None


def score_qualitative(label: str) -> float | None:
    return QUALITATIVE_SCORES.get(label.strip().upper())


def osv_score(record: dict[str, Any]) -> float | None:
    """Highest score from an OSV record's CVSS vectors, else its own qualitative severity."""
    entries = list(record.get("severity") or [])
    for aff in record.get("affected") or []:
        if isinstance(aff, dict):
            entries.extend(aff.get("severity") or [])
    scores = []
    for sev in entries:
        if isinstance(sev, dict) and isinstance(sev.get("score"), str):
            s = score_vector(sev["score"])
            if s is None:
                try:  # some feeds put a bare number in "score"
                    s = float(sev["score"])
                except ValueError:
                    s = None
            if s is not None:
                scores.append(s)
    if scores:
        return max(scores)
    specific = record.get("database_specific")
    if isinstance(specific, dict) and isinstance(specific.get("severity"), str):
        return score_qualitative(specific["severity"])
    return None


def bucket(score: float | None) -> int:
    """DTR bucket: critical >= 7.0, major 4.0..<7.0, minor >0..<4.0, else none."""
    if score is None or score <= 0:
        return Bucket.BUCKET_NONE
    if score >= 7.0:
        return Bucket.BUCKET_CRITICAL
    if score >= 4.0:
        return Bucket.BUCKET_MAJOR
    return Bucket.BUCKET_MINOR


def count(matches: Iterable[VulnMatch]) -> Counts:
    """Counts by bucket of distinct vulnerabilities (ids joined through their aliases).

    One advisory hitting several packages built from one source counts once, at its highest
    score; `all` counts every distinct vulnerability, scored or not.
    """
    groups: list[tuple[set[str], float | None]] = []
    for m in matches:
        names = {m.id, *m.aliases}
        joined = [g for g in groups if g[0] & names]
        score = m.score
        for g in joined:
            names |= g[0]
            if g[1] is not None and (score is None or g[1] > score):
                score = g[1]
            groups.remove(g)
        groups.append((names, score))
    out = Counts(all=len(groups))
    for _names, score in groups:
        b = bucket(score)
        if b == Bucket.BUCKET_CRITICAL:
            out.critical += 1
        elif b == Bucket.BUCKET_MAJOR:
            out.major += 1
        elif b == Bucket.BUCKET_MINOR:
            out.minor += 1
    return out
