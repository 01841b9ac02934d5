"""Fail closed: when the facts cannot support a rule, the policy is blocked, not evaluated.

A rule reading vulnerability counts needs vulnerability data younger than a configured age;
a rule reading components, licenses or vulnerabilities needs an image whose package database
was recognised; and a rule needs every fact kind it reads to have been gathered. Zero
vulnerabilities on an empty database, or no GPL component in an image nobody could read, is
not evidence: such a run must not copy.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import timedelta

from mirror.v1 import common_pb2

DEFAULT_MAX_VULNERABILITY_AGE = timedelta(days=7)
UNKNOWN_COMPONENTS = (
    "no package database was recognised in the image: its components are unknown"
)
NO_VULNERABILITY_DATA = "no vulnerability data"
_COMPONENT_KINDS = frozenset({
    common_pb2.FACT_KIND_COMPONENTS, common_pb2.FACT_KIND_LICENSES,
    common_pb2.FACT_KIND_VULNERABILITIES,
})
_UNITS = (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1))
_AGE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([dhms])")
_SUFFIX_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_age(text: str) -> timedelta:
    """`7d`, `12h`, `30m`, `90s` (or a number of seconds) as a positive timedelta."""
    text = text.strip().lower()
    m = _AGE_RE.fullmatch(text)
    try:
        seconds = float(m.group(1)) * _SUFFIX_SECONDS[m.group(2)] if m else float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an age; use e.g. '7d', '12h' or '30m'") from None
    if seconds <= 0:
        raise ValueError(f"{text!r}: the age must be positive")
    return timedelta(seconds=seconds)


def _unit(limit: timedelta) -> tuple[str, int]:
    """The largest unit that divides the limit (so '36h' stays '36 hours')."""
    total = int(limit.total_seconds())
    for name, size in _UNITS:
        if total >= size and total % size == 0:
            return name, size
    return "second", 1


def _count(n: int, unit: str) -> str:
    return f"{n} {unit}" + ("" if n == 1 else "s")


def describe_age(age: timedelta, limit: timedelta) -> str:
    """'vulnerability data is 12 days old (limit 7 days)': both in the limit's unit."""
    unit, size = _unit(limit)
    return (
        f"vulnerability data is {_count(int(age.total_seconds() // size), unit)} old "
        f"(limit {_count(int(limit.total_seconds() // size), unit)})"
    )


@dataclass(frozen=True)
class FactQuality:
    """What one Evaluate request's facts can support, worked out once for every policy."""

    present: frozenset[int] | None  # None: every kind
    components_unknown: bool
    vulnerability_problem: str  # "" when the vulnerability data is fresh enough

    @property
    def complete(self) -> bool:
        """Every kind present, packages recognised, vulnerability data fresh."""
        return self.present is None and not self.components_unknown and not (
            self.vulnerability_problem
        )

    @classmethod
    def of(
        cls, f: common_pb2.ImageFacts, present: frozenset[int] | None, max_age: timedelta,
        now: float,
    ) -> FactQuality:
        """`now` in seconds since the epoch (plain arithmetic: this runs per Evaluate)."""
        problem = ""
        if not f.HasField("vulnerability_data_time"):
            problem = NO_VULNERABILITY_DATA
        else:
            ts = f.vulnerability_data_time
            age = now - (ts.seconds + ts.nanos / 1e9)
            if age > max_age.total_seconds():
                problem = describe_age(timedelta(seconds=age), max_age)
        return cls(present, f.components_unknown, problem)

    def blocked_reason(self, required: Collection[int]) -> str:
        """Why a rule needing `required` must not be evaluated on these facts ("" if it may)."""
        if self.complete:
            return ""
        lacking = missing(required, self.present)
        reasons = [missing_reason(lacking)] if lacking else []
        have = [k for k in required if k not in lacking]
        if self.components_unknown and not _COMPONENT_KINDS.isdisjoint(have):
            reasons.append(UNKNOWN_COMPONENTS)
        if self.vulnerability_problem and common_pb2.FACT_KIND_VULNERABILITIES in have:
            reasons.append(self.vulnerability_problem)
        return "; ".join(reasons)


def missing(required: Iterable[int], present: Collection[int] | None) -> list[int]:
    return [] if present is None else [k for k in required if k not in present]


# What each fact kind is called in a "needs ... facts" reason.
_KIND_NOUNS: dict[int, str] = {
    common_pb2.FACT_KIND_REFERENCE: "reference",
    common_pb2.FACT_KIND_MANIFEST: "manifest",
    common_pb2.FACT_KIND_COMPONENTS: "component",
    common_pb2.FACT_KIND_LICENSES: "license",
    common_pb2.FACT_KIND_VULNERABILITIES: "vulnerability",
}


def missing_reason(lacking: Iterable[int]) -> str:
    nouns = [_KIND_NOUNS.get(k, f"kind {k}") for k in lacking]
    listed = nouns[0] if len(nouns) == 1 else ", ".join(nouns[:-1]) + " and " + nouns[-1]
    return f"needs {listed} facts, which were not provided"
