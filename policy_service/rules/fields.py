"""The fields a rule can name: their types, the facts they need, and how to read them."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

from policy_service.rules.facts import FactKind, Facts


class FieldType(enum.Enum):
    STRING = "string"
    STRING_SET = "set of strings"
    NUMBER = "number"


@dataclass(frozen=True)
class FieldSpec:
    """One field. ``get`` reads its value (a set field: an ordered tuple); ``get_set`` reads a
    frozenset for membership tests on set fields."""

    name: str
    type: FieldType
    fact: FactKind
    get: Callable[[Facts], Any]
    get_set: Callable[[Facts], frozenset[str]] | None = None
    keyed: bool = False


FIELDS: dict[str, FieldSpec] = {
    spec.name: spec
    for spec in (
        FieldSpec("tag", FieldType.STRING, FactKind.REFERENCE, attrgetter("tag")),
        FieldSpec("repository", FieldType.STRING, FactKind.REFERENCE, attrgetter("repository")),
        FieldSpec("digest", FieldType.STRING, FactKind.REFERENCE, attrgetter("digest")),
        # `get` is unused for label: the compiler builds a getter per key.
        FieldSpec("label", FieldType.STRING, FactKind.MANIFEST, attrgetter("labels"), keyed=True),
        FieldSpec(
            "component",
            FieldType.STRING_SET,
            FactKind.COMPONENTS,
            attrgetter("component_names"),
            attrgetter("component_name_set"),
        ),
        FieldSpec(
            "license",
            FieldType.STRING_SET,
            FactKind.LICENSES,
            attrgetter("license_names"),
            attrgetter("license_set"),
        ),
        FieldSpec(
            "platform",
            FieldType.STRING_SET,
            FactKind.MANIFEST,
            attrgetter("platform_names"),
            attrgetter("platform_set"),
        ),
        FieldSpec("critical_vulns", FieldType.NUMBER, FactKind.VULNERABILITIES,
                  attrgetter("vulns.critical")),
        FieldSpec("major_vulns", FieldType.NUMBER, FactKind.VULNERABILITIES,
                  attrgetter("vulns.major")),
        FieldSpec("minor_vulns", FieldType.NUMBER, FactKind.VULNERABILITIES,
                  attrgetter("vulns.minor")),
        FieldSpec("all_vulns", FieldType.NUMBER, FactKind.VULNERABILITIES,
                  attrgetter("vulns.all")),
        FieldSpec("size", FieldType.NUMBER, FactKind.MANIFEST, attrgetter("size")),
    )
}

SET_OPERATORS = ("==", "!=", "startswith", "endswith", "contains", "in", "not in", "matches")
# `semver` reads one string as a version: a set of strings has no one version to read.
STRING_OPERATORS = (*SET_OPERATORS, "semver")
NUMBER_OPERATORS = ("==", "!=", "<", "<=", ">", ">=")
LIST_OPERATORS = frozenset({"in", "not in"})


def operators_for(type_: FieldType) -> tuple[str, ...]:
    """The operators a field of this type accepts."""
    if type_ is FieldType.NUMBER:
        return NUMBER_OPERATORS
    return SET_OPERATORS if type_ is FieldType.STRING_SET else STRING_OPERATORS
