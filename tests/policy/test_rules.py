"""The rule language: every operator on every field type, set semantics, precedence, escapes,
explanations, fields and required facts."""

from __future__ import annotations

import pytest
from mirror.v1 import common_pb2

from policy_service.rules import (
    ComponentFact,
    FactKind,
    Facts,
    RuleCompileError,
    VulnCounts,
    compile_rule,
)

FACTS = Facts(
    repository="dev/website",
    tag="1.4-stable",
    digest="sha256:" + "ab" * 32,
    components=(
        ComponentFact("zlib", "1.3", "deb", ("Zlib",)),
        ComponentFact("bash", "5.2", "deb", ("GPL-3.0-or-later",)),
        ComponentFact("busybox", "1.36", "apk", ("GPL-2.0-only",)),
        ComponentFact("zlib", "1.3", "deb", ("Zlib",)),  # duplicates are one element
    ),
    vulns=VulnCounts(critical=2, major=5, minor=7, all=14),
    labels={"maintainer": "qa@example.com", "tier": "gold"},
    platforms=("linux/amd64", "linux/arm64/v8"),
    size=50 * 1024 * 1024,
)
EMPTY = Facts(repository="dev/website", tag="latest")


def holds(rule: str, facts: Facts = FACTS) -> bool:
    compiled = compile_rule(rule)
    result = compiled.evaluate(facts)
    assert compiled.explain(facts).result is result
    return result


@pytest.mark.parametrize(("rule", "expected"), [
    # strings
    ('tag == "1.4-stable"', True),
    ('tag == "1.4"', False),
    ('tag != "1.4"', True),
    ('tag != "1.4-stable"', False),
    ('tag startswith "1.4"', True),
    ('tag startswith "stable"', False),
    ('tag endswith "stable"', True),
    ('tag endswith "1.4"', False),
    ('tag contains "-"', True),
    ('tag contains "beta"', False),
    ('tag in ["latest", "1.4-stable"]', True),
    ('tag in ["latest"]', False),
    ('tag in []', False),
    ('tag not in ["latest"]', True),
    ('tag not in ["latest", "1.4-stable"]', False),
    ('tag not in []', True),
    ('tag matches "^[0-9]+\\\\.[0-9]+-stable$"', True),
    ('tag matches "^v"', False),
    ('tag matches "stab"', True),  # unanchored, like RE2's partial match
    ('repository == "dev/website"', True),
    ('repository startswith "qa/"', False),
    ('digest startswith "sha256:abab"', True),
    ('digest matches "^sha512:"', False),
    ('label["tier"] == "gold"', True),
    ('label["maintainer"] endswith "@example.com"', True),
    ('label["tier"] in ["silver", "bronze"]', False),
    ('label["missing"] == ""', True),  # a missing label is the empty string
    ('label["missing"] != ""', False),
    ('label["missing"] startswith ""', True),
    # numbers
    ("critical_vulns == 2", True),
    ("critical_vulns == 3", False),
    ("critical_vulns != 3", True),
    ("critical_vulns != 2", False),
    ("critical_vulns < 3", True),
    ("critical_vulns < 2", False),
    ("critical_vulns <= 2", True),
    ("critical_vulns <= 1", False),
    ("critical_vulns > 1", True),
    ("critical_vulns > 2", False),
    ("critical_vulns >= 2", True),
    ("critical_vulns >= 3", False),
    ("major_vulns == 5", True),
    ("minor_vulns == 7", True),
    ("all_vulns >= 14", True),
    ("all_vulns > 14", False),
    ("size == 52428800", True),
    ("size == 50MiB", True),
    ("size < 50MiB", False),
    ("size <= 51200KiB", True),
    ("size < 1GiB", True),
    ("size > 1TiB", False),
])
def test_operators_on_scalars(rule: str, expected: bool) -> None:
    assert holds(rule) is expected


@pytest.mark.parametrize(("rule", "expected"), [
    # positive operators: ANY element
    ('component == "bash"', True),
    ('component == "curl"', False),
    ('component startswith "b"', True),
    ('component startswith "c"', False),
    ('component endswith "box"', True),
    ('component endswith "xx"', False),
    ('component contains "usy"', True),
    ('component contains "q"', False),
    ('component in ["curl", "zlib"]', True),
    ('component in ["curl", "wget"]', False),
    ('component matches "^bu.*x$"', True),
    ('component matches "^[0-9]"', False),
    # negative operators: NO element
    ('component != "curl"', True),
    ('component != "bash"', False),
    ('component not in ["curl", "wget"]', True),
    ('component not in ["curl", "bash"]', False),
    ('license == "Zlib"', True),
    ('license in ["MIT", "GPL-2.0-only"]', True),
    ('license not in ["GPL-3.0-only"]', True),
    ('license not in ["GPL-3.0-only", "GPL-3.0-or-later"]', False),
    ('license startswith "GPL-3"', True),
    ('license matches "^AGPL"', False),
    ('platform == "linux/amd64"', True),
    ('platform == "linux/arm64"', False),  # the element is "linux/arm64/v8"
    ('platform startswith "linux/arm64"', True),
    ('platform != "windows/amd64"', True),
    ('platform != "linux/amd64"', False),
    ('platform in ["linux/s390x"]', False),
    ('platform not in ["linux/s390x"]', True),
    ('platform endswith "/v8"', True),
    ('platform contains "arm"', True),
])
def test_set_fields_any_and_none(rule: str, expected: bool) -> None:
    assert holds(rule) is expected


@pytest.mark.parametrize("field", ["component", "license", "platform"])
@pytest.mark.parametrize(("operator", "operand", "expected"), [
    ("==", '"x"', False),
    ("startswith", '""', False),  # even the empty prefix: there is no element
    ("endswith", '"x"', False),
    ("contains", '""', False),
    ("in", '["x"]', False),
    ("matches", '""', False),
    ("!=", '"x"', True),
    ("not in", '["x"]', True),
])
def test_empty_sets(field: str, operator: str, operand: str, expected: bool) -> None:
    assert holds(f"{field} {operator} {operand}", EMPTY) is expected


def test_empty_set_explanation_renders_an_empty_list() -> None:
    outcome = compile_rule('component != "x"').explain(EMPTY)
    assert outcome.clauses[0].value == "[]"
    assert outcome.result is True


def test_license_of_any_component_counts() -> None:
    facts = Facts(components=(ComponentFact("a", licenses=("MIT", "Apache-2.0")),
                              ComponentFact("b", licenses=())))
    assert holds('license == "Apache-2.0"', facts)
    assert not holds('license not in ["Apache-2.0"]', facts)
    assert holds('component == "b"', facts)


@pytest.mark.parametrize(("a", "b", "c"), [(a, b, c) for a in (0, 1) for b in (0, 1)
                                           for c in (0, 1)])
def test_precedence_not_and_or(a: int, b: int, c: int) -> None:
    words = {0: "false", 1: "true"}
    rule = f"not {words[a]} and {words[b]} or {words[c]}"
    assert holds(rule) is (((not a) and bool(b)) or bool(c))
    # and the same with comparisons instead of literals
    clause = {0: 'tag == "nope"', 1: 'tag == "1.4-stable"'}
    assert holds(f"not {clause[a]} and {clause[b]} or {clause[c]}") is (
        ((not a) and bool(b)) or bool(c))


def test_parentheses_override_precedence() -> None:
    assert holds("false and false or true") is True
    assert holds("false and (false or true)") is False
    assert holds("not (true and false)") is True
    assert holds("not true and false") is False
    assert holds("not not true") is True
    assert holds("((((true))))") is True


def test_keywords_are_not_prefixes_of_names() -> None:
    # 'notes', 'order', 'android' must not lex as not/or/and followed by a name.
    rule = compile_rule('label["notes"] == "android" or tag in ["order"]')
    assert rule.evaluate(Facts(labels={"notes": "android"}))
    assert rule.evaluate(Facts(tag="order"))
    assert not rule.evaluate(Facts(tag="other"))


@pytest.mark.parametrize(("literal", "value"), [
    (r'"a\"b"', 'a"b'),
    (r'"back\\slash"', "back\\slash"),
    (r'"line\nbreak"', "line\nbreak"),
    (r'"tab\there"', "tab\there"),
    (r'"caf\u00e9"', "café"),
    (r'"\u00E9\u4e2d"', "é中"),
    (r'""', ""),
    ('"naïve ✓"', "naïve ✓"),
])
def test_string_escapes(literal: str, value: str) -> None:
    rule = compile_rule(f'label["k"] == {literal}')
    assert rule.evaluate(Facts(labels={"k": value}))
    assert not rule.evaluate(Facts(labels={"k": value + "x"}))


def test_label_key_escapes() -> None:
    rule = compile_rule(r'label["org.opencontainers.image.\"title\""] == "x"')
    assert rule.evaluate(Facts(labels={'org.opencontainers.image."title"': "x"}))


def test_multi_line_rule_with_comments() -> None:
    text = (
        "# promote stable builds without GPL-3\n"
        'tag endswith "stable"      # DTR\'s example\n'
        "  and critical_vulns <= 3\n"
        '  and license not in ["GPL-3.0-only",\n'
        '                      "AGPL-3.0-only"]\n'
    )
    rule = compile_rule(text)
    assert rule.evaluate(FACTS)
    clauses = rule.explain(FACTS).clauses
    assert [(c.line, c.column) for c in clauses] == [(2, 1), (3, 7), (4, 7)]
    assert clauses[2].clause == (
        'license not in ["GPL-3.0-only",\n                      "AGPL-3.0-only"]')


def test_regex_is_re2_and_linear_time() -> None:
    # A catastrophic pattern for backtracking engines returns at once under RE2.
    rule = compile_rule('tag matches "^(a+)+$"')
    assert not rule.evaluate(Facts(tag="a" * 5000 + "!"))
    assert rule.evaluate(Facts(tag="aaaa"))


def test_regex_matches_unicode() -> None:
    assert holds('label["k"] matches "^é+$"', Facts(labels={"k": "ééé"}))


def test_seed_rule() -> None:
    rule = compile_rule('tag endswith "stable" and critical_vulns <= 3')
    assert rule.evaluate(FACTS)
    assert not rule.evaluate(Facts(tag="1.4-stable", vulns=VulnCounts(critical=4)))
    assert not rule.evaluate(Facts(tag="1.4-beta"))


def test_fields_and_required_facts() -> None:
    rule = compile_rule('tag endswith "stable" and critical_vulns <= 3')
    assert rule.fields == frozenset({"tag", "critical_vulns"})
    assert rule.required_facts == frozenset({FactKind.REFERENCE, FactKind.VULNERABILITIES})
    every = compile_rule(
        'repository == "a" or digest == "b" or label["x"] == "" or platform == "p" or size > 1'
        ' or component == "c" or license == "l" or minor_vulns > 0')
    assert every.fields == frozenset({"repository", "digest", "label", "platform", "size",
                                      "component", "license", "minor_vulns"})
    assert every.required_facts == frozenset({
        FactKind.REFERENCE, FactKind.MANIFEST, FactKind.COMPONENTS, FactKind.LICENSES,
        FactKind.VULNERABILITIES})
    assert compile_rule("true").required_facts == frozenset()
    assert compile_rule("true").fields == frozenset()


def test_fact_kind_mirrors_the_proto_enum() -> None:
    proto = common_pb2.FactKind
    for kind in FactKind:
        assert proto.Value(f"FACT_KIND_{kind.name}") == kind.value
    assert len(proto.keys()) == len(FactKind)


def test_explain_reports_every_clause_without_short_circuit() -> None:
    rule = compile_rule(
        'tag == "nope" and (component startswith "b" or size > 1GiB)\n'
        '  or label["tier"] == "gold"')
    explanation = rule.explain(FACTS)
    assert explanation.result is True
    assert [(c.clause, c.value, c.result, c.line, c.column) for c in explanation.clauses] == [
        ('tag == "nope"', '"1.4-stable"', False, 1, 1),
        ('component startswith "b"', '["zlib","bash","busybox"]', True, 1, 20),
        ("size > 1GiB", "52428800", False, 1, 48),
        ('label["tier"] == "gold"', '"gold"', True, 2, 6),
    ]


def test_explain_renders_strings_quoted_with_escapes() -> None:
    explanation = compile_rule('label["k"] == "x"').explain(Facts(labels={"k": 'a"b\né'}))
    assert explanation.clauses[0].value == '"a\\"b\\né"'
    assert explanation.result is False


def test_evaluate_short_circuits() -> None:
    class Exploding(Facts):
        @property
        def component_names(self) -> tuple[str, ...]:  # type: ignore[override]
            raise AssertionError("evaluate read a field it did not need")

    facts = Exploding(tag="x")
    assert compile_rule('tag == "x" or component startswith "b"').evaluate(facts) is True
    assert compile_rule('tag == "y" and component startswith "b"').evaluate(facts) is False
    with pytest.raises(AssertionError):
        compile_rule('component startswith "b"').evaluate(facts)


def test_a_rule_compiles_once_and_evaluates_many_times() -> None:
    rule = compile_rule('tag matches "^v[0-9]+$" and component in ["a", "b"]')
    for i in range(200):
        facts = Facts(tag=f"v{i}", components=(ComponentFact("a" if i % 2 else "c"),))
        assert rule.evaluate(facts) is bool(i % 2)


def test_non_string_rule_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        compile_rule(b'tag == "x"')  # type: ignore[arg-type]


def test_error_is_a_value_error_with_a_readable_message() -> None:
    with pytest.raises(RuleCompileError) as info:
        compile_rule("critcal_vulns <= 3")
    assert isinstance(info.value, ValueError)
    assert str(info.value) == (
        "line 1, column 1: unknown field 'critcal_vulns'; did you mean 'critical_vulns'?")
