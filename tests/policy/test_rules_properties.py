"""Property-based tests of the rule language: the compiler never crashes on any text, and a
compiled rule agrees with a straightforward reference interpreter written here (versions read
by semver.org's own regular expression and ranges decided comparator by comparator by
semantic_version's NpmSpec: neither is the compiler's code)."""

from __future__ import annotations

import re
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from semantic_version import NpmSpec, Version

from policy_service.rules import ComponentFact, Facts, RuleCompileError, VulnCounts, compile_rule
from policy_service.rules.facts import SignatureFact

SETTINGS = settings(max_examples=400, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

# ---------------------------------------------------------------------------------------------
# Any text: only RuleCompileError, always positioned.

TOKENS = ["tag", "component", "license", "size", "critical_vulns", "label", "critcal_vulns",
          "and", "or", "not", "in", "true", "false", "startswith", "endswith", "contains",
          "matches", "==", "!=", "<", "<=", ">", ">=", "(", ")", "[", "]", ",", '"a"', '"',
          '"\\u12"', '"\\q"', '"(a"', "3", "3KiB", "99999999999999999999", "=", "&&", "#x\n",
          "\n", " ", "é", "\\", "'", "semver", "signed", "signed_by", '">=1 <2"', '">=x"',
          '"1 || "', '"v1.2.3-a"', '"||"', '""', '"ci"']


def check_compiles_or_fails_cleanly(text: str) -> None:
    try:
        rule = compile_rule(text)
    except RuleCompileError as exc:
        assert exc.errors
        lines = text.split("\n")
        for error in exc.errors:
            assert 1 <= error.line <= len(lines)
            # a column may point just past the end of its line (an unexpected end of rule)
            assert 1 <= error.column <= len(lines[error.line - 1]) + 1
            assert error.message
    else:
        # whatever compiled must evaluate on any facts without raising
        assert rule.evaluate(Facts()) in (True, False)
        assert rule.explain(Facts()).result is rule.evaluate(Facts())


@SETTINGS
@given(st.text(max_size=200))
def test_random_text_never_crashes(text: str) -> None:
    check_compiles_or_fails_cleanly(text)


@SETTINGS
@given(st.lists(st.sampled_from(TOKENS), max_size=40).map(" ".join))
def test_random_token_soup_never_crashes(text: str) -> None:
    check_compiles_or_fails_cleanly(text)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["(", ")", "not ", "true", " and ", " or "]),
                min_size=60, max_size=400).map("".join))
def test_random_nesting_never_crashes(text: str) -> None:
    check_compiles_or_fails_cleanly(text)


# ---------------------------------------------------------------------------------------------
# Well-typed random rules against a reference interpreter.

ALPHABET = "ab.-é\"\\\n"
short_text = st.text(alphabet=ALPHABET, max_size=3)
REGEXES = ["^a", "b$", "a.b", "é", "^$", "\\.", "a|b", "^[ab]+$", "\\\\", '"']
STRING_FIELDS = ["tag", "repository", "digest", "label"]
SET_FIELDS = ["component", "license", "platform"]
NUMBER_FIELDS = ["critical_vulns", "major_vulns", "minor_vulns", "all_vulns", "size"]
STRING_OPS = ["==", "!=", "startswith", "endswith", "contains", "in", "not in", "matches"]
NUMBER_OPS = ["==", "!=", "<", "<=", ">", ">="]
KEYS = ["ci", "release", "c"]
RANGE_OPS = ["", ">=", ">", "<", "<=", "=", "!=", "=="]

# Strings that are, nearly are, or are not versions (leading zeros, four numbers, bad suffixes).
version_text = st.builds(
    lambda v, numbers, suffix: v + ".".join(numbers) + suffix,
    st.sampled_from(["", "v", "V"]),
    st.lists(st.sampled_from(["0", "1", "2", "25", "01"]), min_size=1, max_size=4),
    st.sampled_from(["", "", "-alpine", "-rc.1", "-01", "-0", "-", "_x", "+b", "-a.b"]),
)
maybe_version = st.one_of(short_text, version_text)
comparator = st.tuples(st.sampled_from(RANGE_OPS), st.sampled_from(["", "v"]),
                       st.lists(st.sampled_from(["0", "1", "2", "25"]), min_size=1,
                                max_size=3).map(".".join))
ranges = st.lists(st.lists(comparator, min_size=1, max_size=3), min_size=1, max_size=3)


@st.composite
def comparisons(draw: st.DrawFn) -> tuple[Any, ...]:
    kind = draw(st.sampled_from(["string", "set", "number", "semver", "signed"]))
    if kind == "signed":
        return ("signed", draw(st.sampled_from([None, *KEYS])))
    if kind == "semver":
        field = draw(st.sampled_from(STRING_FIELDS))
        key = draw(st.sampled_from(["k1", "k2"])) if field == "label" else None
        return ("cmp", field, key, "semver", ("range", tuple(map(tuple, draw(ranges)))))
    if kind == "number":
        field = draw(st.sampled_from(NUMBER_FIELDS))
        op = draw(st.sampled_from(NUMBER_OPS))
        if field == "size" and draw(st.booleans()):
            units = draw(st.integers(0, 3))
            return ("cmp", field, None, op, ("size", units))  # e.g. 2KiB
        return ("cmp", field, None, op, draw(st.integers(0, 6)))
    field = draw(st.sampled_from(STRING_FIELDS if kind == "string" else SET_FIELDS))
    key = draw(st.sampled_from(["k1", "k2", 'k"3'])) if field == "label" else None
    op = draw(st.sampled_from(STRING_OPS))
    if op in ("in", "not in"):
        operand: Any = tuple(draw(st.lists(short_text, max_size=3)))
    elif op == "matches":
        operand = ("re", draw(st.sampled_from(REGEXES)))
    else:
        operand = draw(short_text)
    return ("cmp", field, key, op, operand)


def expressions() -> st.SearchStrategy[Any]:
    leaves = st.one_of(comparisons(), st.booleans().map(lambda b: ("const", b)))
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            inner.map(lambda e: ("not", e)),
            st.lists(inner, min_size=2, max_size=4).map(lambda es: ("and", es)),
            st.lists(inner, min_size=2, max_size=4).map(lambda es: ("or", es)),
        ),
        max_leaves=16,
    )


def quote(value: str, use_unicode_escape: bool) -> str:
    out = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    if use_unicode_escape:
        out = out.replace("é", "\\u00e9")
    return f'"{out}"'


def render(expr: Any, draw: st.DrawFn, parent: str = "or") -> str:
    """Rule text with the fewest parentheses precedence allows, plus some redundant ones."""
    kind = expr[0]
    if kind == "const":
        text = "true" if expr[1] else "false"
    elif kind == "cmp":
        _, field, key, op, operand = expr
        q = draw(st.booleans())
        lhs = f"label[{quote(key, q)}]" if key is not None else field
        if isinstance(operand, tuple) and operand and operand[0] == "size":
            rhs = f"{operand[1]}KiB"
        elif isinstance(operand, tuple) and operand and operand[0] == "re":
            rhs = quote(operand[1], q)
        elif isinstance(operand, tuple) and operand and operand[0] == "range":
            gap = draw(st.sampled_from([" ", "  ", ""]))
            rhs = quote(" || ".join(
                " ".join(f"{op}{gap if op else ''}{v}{numbers}" for op, v, numbers in alt)
                for alt in operand[1]), q)
        elif isinstance(operand, tuple):
            rhs = "[" + ", ".join(quote(v, q) for v in operand) + "]"
        elif isinstance(operand, int):
            rhs = str(operand)
        else:
            rhs = quote(operand, q)
        space = draw(st.sampled_from([" ", "  ", "\n", " # c\n "]))
        text = f"{lhs}{space}{op} {rhs}"
    elif kind == "signed":
        text = "signed" if expr[1] is None else f"signed_by {quote(expr[1], draw(st.booleans()))}"
    elif kind == "not":
        text = "not " + render(expr[1], draw, "not")
    else:
        sep = draw(st.sampled_from([f" {kind} ", f"\n{kind} ", f" {kind}\n  "]))
        text = sep.join(render(e, draw, kind) for e in expr[1])
    binds = {"or": 0, "and": 1, "not": 2}
    own = binds.get(kind, 3)
    if (own <= binds[parent] and kind in ("or", "and")) or draw(st.integers(0, 9)) == 0:
        text = f"({text})"
    return text


def reference(expr: Any, facts: Facts) -> bool:
    kind = expr[0]
    if kind == "const":
        return expr[1]
    if kind == "not":
        return not reference(expr[1], facts)
    if kind == "and":
        return all(reference(e, facts) for e in expr[1])
    if kind == "or":
        return any(reference(e, facts) for e in expr[1])
    if kind == "signed":
        return any(expr[1] in s.verified_by if expr[1] else bool(s.verified_by)
                   for s in facts.signatures)
    _, field, key, op, operand = expr
    if op == "semver":
        value = facts.labels.get(key, "") if field == "label" else getattr(facts, field)
        return in_range(value, operand[1])
    if isinstance(operand, tuple) and operand and operand[0] == "size":
        operand = operand[1] * 1024
    elif isinstance(operand, tuple) and operand and operand[0] == "re":
        operand = re.compile(operand[1])
    if field in NUMBER_FIELDS:
        value = facts.size if field == "size" else getattr(facts.vulns, field[: -len("_vulns")])
        return {"==": value == operand, "!=": value != operand, "<": value < operand,
                "<=": value <= operand, ">": value > operand, ">=": value >= operand}[op]
    if field in SET_FIELDS:
        if field == "component":
            elements = [c.name for c in facts.components]
        elif field == "license":
            elements = [lic for c in facts.components for lic in c.licenses]
        else:
            elements = list(facts.platforms)
        if op == "!=":
            return all(e != operand for e in elements)
        if op == "not in":
            return all(e not in operand for e in elements)
        return any(string_op(op, e, operand) for e in elements)
    value = facts.labels.get(key, "") if field == "label" else getattr(facts, field)
    return string_op(op, value, operand)


def string_op(op: str, value: str, operand: Any) -> bool:
    if op == "==":
        return value == operand
    if op == "!=":
        return value != operand
    if op == "startswith":
        return value.startswith(operand)
    if op == "endswith":
        return value.endswith(operand)
    if op == "contains":
        return operand in value
    if op == "in":
        return value in operand
    if op == "not in":
        return value not in operand
    assert op == "matches"
    return operand.search(value) is not None


# semver.org's regular expression for a version, with minor and patch made optional and a
# leading "v" allowed, as the rule language reads tags.
SEMVER_ORG = re.compile(
    r"v?(0|[1-9]\d*)(?:\.(0|[1-9]\d*)(?:\.(0|[1-9]\d*))?)?"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?", re.ASCII)


def in_range(value: str, alternatives: Any) -> bool:
    """The documented meaning: the release numbers (suffix ignored) against npm X-ranges."""
    m = SEMVER_ORG.fullmatch(value)
    if m is None:
        return False
    release = Version(".".join(n or "0" for n in m.groups()[:3]))

    def holds(op: str, numbers: str) -> bool:
        if op == "!=":
            return not NpmSpec("=" + numbers).match(release)
        return NpmSpec(("=" if op in ("", "==") else op) + numbers).match(release)
    return any(all(holds(op, numbers) for op, _, numbers in alt) for alt in alternatives)


def count_comparisons(expr: Any) -> int:
    if expr[0] in ("cmp", "signed"):
        return 1
    if expr[0] == "const":
        return 0
    if expr[0] == "not":
        return count_comparisons(expr[1])
    return sum(count_comparisons(e) for e in expr[1])


signature_facts = st.builds(
    SignatureFact, manifest_digest=st.just("sha256:1"),
    verified_by=st.lists(st.sampled_from(KEYS), max_size=2, unique=True).map(tuple),
    problem=st.sampled_from(["", "signed by another key"]),
)
facts_strategy = st.builds(
    Facts,
    repository=maybe_version,
    tag=maybe_version,
    digest=short_text,
    components=st.lists(
        st.builds(ComponentFact, name=short_text,
                  licenses=st.lists(short_text, max_size=2).map(tuple)),
        max_size=3).map(tuple),
    vulns=st.builds(VulnCounts, critical=st.integers(0, 6), major=st.integers(0, 6),
                    minor=st.integers(0, 6), all=st.integers(0, 6)),
    labels=st.dictionaries(st.sampled_from(["k1", "k2", 'k"3']), maybe_version, max_size=3),
    platforms=st.lists(short_text, max_size=3).map(tuple),
    size=st.sampled_from([0, 1, 5, 1023, 1024, 2048, 3072, 4000]),
    signatures=st.lists(signature_facts, max_size=3).map(tuple),
)


@SETTINGS
@given(expressions(), st.lists(facts_strategy, min_size=1, max_size=4), st.data())
def test_compiled_rule_agrees_with_reference_interpreter(
        expr: Any, facts_list: list[Facts], data: st.DataObject) -> None:
    text = render(expr, data.draw)
    rule = compile_rule(text)
    for facts in facts_list:
        expected = reference(expr, facts)
        assert rule.evaluate(facts) is expected, text
        explanation = rule.explain(facts)
        assert explanation.result is expected
        assert len(explanation.clauses) == count_comparisons(expr)


@SETTINGS
@given(ranges, st.lists(version_text, min_size=1, max_size=8), st.data())
def test_semver_clause_agrees_with_semver_org_and_npm_ranges(
        alternatives: list[list[tuple[str, str, str]]], tags: list[str],
        data: st.DataObject) -> None:
    expr = ("cmp", "tag", None, "semver", ("range", tuple(map(tuple, alternatives))))
    text = render(expr, data.draw)
    rule = compile_rule(text)
    for tag in tags:
        assert rule.evaluate(Facts(tag=tag)) is in_range(tag, alternatives), (text, tag)
