"""DTR's criteria rows (Tag name, Component name, Vulnerabilities, License) -> a rule.

Each row is (field, operator, value); rows are joined with `and` (DTR: all must hold) or `or`.
The rule is plain rule-language text, so the editor below the rows can take it further.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

# field key -> (label, rule field, kind)
FIELDS: dict[str, tuple[str, str, str]] = {
    "tag": ("Tag name", "tag", "string"),
    "component": ("Component name", "component", "string"),
    "critical_vulns": ("Critical vulnerabilities", "critical_vulns", "number"),
    "major_vulns": ("Major vulnerabilities", "major_vulns", "number"),
    "minor_vulns": ("Minor vulnerabilities", "minor_vulns", "number"),
    "all_vulns": ("All vulnerabilities", "all_vulns", "number"),
    "license": ("License", "license", "license"),
}

# kind -> [(operator key, label, rule operator)]
OPERATORS: dict[str, list[tuple[str, str, str]]] = {
    "string": [
        ("eq", "equals", "=="),
        ("startswith", "starts with", "startswith"),
        ("endswith", "ends with", "endswith"),
        ("contains", "contains", "contains"),
        ("in", "is one of", "in"),
        ("not_in", "is not one of", "not in"),
    ],
    "number": [
        ("ge", ">=", ">="),
        ("gt", ">", ">"),
        ("eq", "=", "=="),
        ("ne", "!=", "!="),
        ("le", "<=", "<="),
        ("lt", "<", "<"),
    ],
    "license": [("in", "is one of", "in"), ("not_in", "is not one of", "not in")],
}


class CriteriaError(ValueError):
    def __init__(self, row: int, message: str) -> None:
        super().__init__(f"criterion {row}: {message}" if row else message)
        self.row = row
        self.message = message


@dataclass(frozen=True)
class Criterion:
    field: str
    operator: str
    value: str

    def kind(self) -> str:
        return FIELDS[self.field][2] if self.field in FIELDS else ""


def _quote(text: str) -> str:
    # The rule language's strings are double-quoted with backslash escapes, as in JSON.
    return json.dumps(text, ensure_ascii=False)


def clause(c: Criterion, row: int = 1) -> str:
    """One row as a rule clause, e.g. `tag endswith "stable"`; CriteriaError when it cannot be."""
    if c.field not in FIELDS:
        raise CriteriaError(row, f"unknown attribute {c.field!r}")
    _, name, kind = FIELDS[c.field]
    ops = {key: op for key, _, op in OPERATORS[kind]}
    if c.operator not in ops:
        raise CriteriaError(row, f"{FIELDS[c.field][0]} has no operator {c.operator!r}")
    op = ops[c.operator]
    value = c.value.strip()
    if kind == "number":
        if not value.isdigit():
            raise CriteriaError(row, f"{FIELDS[c.field][0]}: enter a whole number")
        return f"{name} {op} {int(value)}"
    if op in ("in", "not in"):
        items = [v.strip() for v in value.split(",") if v.strip()]
        if not items:
            raise CriteriaError(row, f"{FIELDS[c.field][0]}: enter one or more values, "
                                     "separated by commas")
        return f"{name} {op} [{', '.join(_quote(v) for v in items)}]"
    if not value:
        raise CriteriaError(row, f"{FIELDS[c.field][0]}: enter a value")
    return f"{name} {op} {_quote(value)}"


def rule_of(criteria: list[Criterion], join: str = "and") -> str:
    """The rule the rows make: `true` for no rows (every tag), clauses joined by and/or."""
    if join not in ("and", "or"):
        raise CriteriaError(0, "combine rows with 'and' or 'or'")
    clauses = [clause(c, i) for i, c in enumerate(criteria, start=1)]
    return f" {join} ".join(clauses) if clauses else "true"
