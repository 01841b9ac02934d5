"""The facts a rule looks at, and the kinds of facts a rule may need."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property


class FactKind(enum.IntEnum):
    """Kinds of facts; values equal ``mirror.v1.FactKind`` (kept in sync by a test)."""

    UNSPECIFIED = 0
    REFERENCE = 1
    MANIFEST = 2
    COMPONENTS = 3
    LICENSES = 4
    VULNERABILITIES = 5
    SIGNATURES = 6


@dataclass(frozen=True)
class ComponentFact:
    """A software component found in an image."""

    name: str
    version: str = ""
    type: str = ""
    licenses: tuple[str, ...] = ()


@dataclass(frozen=True)
class VulnCounts:
    """Vulnerability counts by DTR's severity buckets."""

    critical: int = 0
    major: int = 0
    minor: int = 0
    all: int = 0


@dataclass(frozen=True)
class SignatureFact:
    """A signature found for an image, as verified before the rule runs.

    ``verified_by`` names the trusted keys that verified it; ``problem`` says why none did.
    ``mirror.v1.SignatureFact`` messages have the same attributes and may stand in for it.
    """

    manifest_digest: str = ""
    verified_by: tuple[str, ...] = ()
    problem: str = ""
    found_by: str = ""


def _unique(values: object) -> tuple[str, ...]:
    # dict keeps first-seen order, so explanations list values as the scanner reported them.
    return tuple(dict.fromkeys(values))  # type: ignore[call-overload]


@dataclass(frozen=True)
class Facts:
    """Everything a rule can look at about one image.

    The derived sets (component names, licenses) are computed on first use and cached, so
    evaluating many rules against one ``Facts`` pays for them once.
    """

    repository: str = ""
    tag: str = ""
    digest: str = ""
    components: tuple[ComponentFact, ...] = ()
    vulns: VulnCounts = field(default_factory=VulnCounts)
    labels: Mapping[str, str] = field(default_factory=dict)
    platforms: tuple[str, ...] = ()
    size: int = 0
    signatures: tuple[SignatureFact, ...] = ()

    @cached_property
    def component_names(self) -> tuple[str, ...]:
        """Distinct component names, in first-seen order."""
        return _unique(c.name for c in self.components)

    @cached_property
    def component_name_set(self) -> frozenset[str]:
        return frozenset(self.component_names)

    @cached_property
    def license_names(self) -> tuple[str, ...]:
        """Distinct licenses over all components, in first-seen order."""
        return _unique(lic for c in self.components for lic in c.licenses)

    @cached_property
    def license_set(self) -> frozenset[str]:
        return frozenset(self.license_names)

    @cached_property
    def platform_names(self) -> tuple[str, ...]:
        return _unique(self.platforms)

    @cached_property
    def platform_set(self) -> frozenset[str]:
        return frozenset(self.platforms)
