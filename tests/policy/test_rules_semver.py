"""`tag semver "RANGE"`: which tags a range picks (leading v, suffixes, partial versions, ||),
what an explanation says, and rule errors at the offending character of a bad range."""

from __future__ import annotations

import pytest

from policy_service.rules import FactKind, Facts, RuleCompileError, compile_rule
from policy_service.rules.versions import MAX_VERSION_CHARS, release_of

NGINX_TAGS = ["1.24.0", "1.25", "1.25.0", "1.25.3", "1.25.3-alpine", "v1.25.3",
              "1.25.3-alpine3.19-slim", "1.26.0-rc.1", "1.99.99", "2", "2.0.0", "2.0.0-alpine",
              "latest", "stable-alpine", "mainline", "1.25.3.1", "01.25.3", "1.25.03",
              "1.25.3_alpine", "1.25.3+build", "V1.25.3", "vv1.25.3", "", "v", "1.", "1..2"]


def picked(rule_range: str, tags: list[str] = NGINX_TAGS, field: str = "tag") -> list[str]:
    rule = compile_rule(f'{field} semver "{rule_range}"')
    return [t for t in tags if rule.evaluate(Facts(tag=t))]


def test_the_issue_range_picks_1_x_from_1_25_with_suffixes_and_v() -> None:
    assert picked(">=1.25 <2") == ["1.25", "1.25.0", "1.25.3", "1.25.3-alpine", "v1.25.3",
                                   "1.25.3-alpine3.19-slim", "1.26.0-rc.1", "1.99.99",
                                   "1.25.3+build"]


@pytest.mark.parametrize(("rng", "tags", "expected"), [
    # A suffix takes no part: 1.25.3-alpine is 1.25.3 to a range.
    (">=1.25.3", ["1.25.3-alpine", "1.25.2-alpine"], ["1.25.3-alpine"]),
    ("<1.25.3", ["1.25.3-alpine", "1.25.2-alpine"], ["1.25.2-alpine"]),
    ("=1.25.3", ["1.25.3", "1.25.3-alpine", "1.25.4"], ["1.25.3", "1.25.3-alpine"]),
    # Partial versions compare only the numbers they give (npm's X-ranges).
    ("<=1.25", ["1.25.9", "1.26.0", "1.24.0"], ["1.25.9", "1.24.0"]),
    (">1.25", ["1.25.9", "1.26.0"], ["1.26.0"]),
    ("<2", ["1.99.99", "2.0.0", "2.0.0-rc.1"], ["1.99.99"]),
    ("=1", ["0.9.9", "1.0.0", "1.99.0", "2.0.0"], ["1.0.0", "1.99.0"]),
    ("1.25", ["1.24.9", "1.25.0", "1.25.7", "1.26.0"], ["1.25.0", "1.25.7"]),
    ("!=1.25", ["1.24.9", "1.25.0", "1.25.7", "1.26.0"], ["1.24.9", "1.26.0"]),
    ("!=1.25.7", ["1.25.0", "1.25.7", "1.25.7-alpine"], ["1.25.0"]),
    # A partial tag is its numbers with zeros: 1.25 is 1.25.0.
    (">=1.25.1", ["1.25", "1.26"], ["1.26"]),
    # Alternatives, operators with or without spaces, a leading v and '==' in a range.
    ("<1.20 || >=2 <3 || =1.25.3", ["1.19.0", "1.20.0", "1.25.3", "2.5.0", "3.0.0"],
     ["1.19.0", "1.25.3", "2.5.0"]),
    (">= 1.25  <  2", ["1.25.0", "2.0.0"], ["1.25.0"]),
    (">=1.25<2", ["1.25.0", "2.0.0"], ["1.25.0"]),
    (">=v1.25 <v2", ["1.30.0"], ["1.30.0"]),
    ("==1.25", ["1.25.1", "1.26.0"], ["1.25.1"]),
    # A range that nothing can satisfy is not an error; it matches nothing.
    (">=2 <1", ["0.5.0", "1.5.0", "2.5.0"], []),
    ("  0.1.0  ", ["0.1.0", "0.1.1"], ["0.1.0"]),
])
def test_ranges(rng: str, tags: list[str], expected: list[str]) -> None:
    assert picked(rng, tags) == expected


@pytest.mark.parametrize("tag", ["latest", "stable-alpine", "1.25.3.1", "01.25.3", "1.25.03",
                                 "1.25.3_alpine", "V1.25.3", "vv1.25.3", "", "v", "1.", "1..2",
                                 "1.2.3-01", "1.2.3-", "1" * 5000, "1." * 200 + "1"])
def test_a_tag_that_is_not_a_version_makes_the_clause_false(tag: str) -> None:
    assert release_of(tag) is None
    assert not compile_rule('tag semver ">=0"').evaluate(Facts(tag=tag))
    # ...and its negation true: `not` of a clause that cannot read a version.
    assert compile_rule('not tag semver ">=0"').evaluate(Facts(tag=tag))


def test_a_version_longer_than_the_limit_is_not_read() -> None:
    long_suffix = "1.2.3-" + "a" * (MAX_VERSION_CHARS - 6)
    assert release_of(long_suffix) == (1, 2, 3)
    assert release_of(long_suffix + "a") is None


def test_semver_applies_to_labels_and_other_string_fields() -> None:
    rule = compile_rule('label["org.opencontainers.image.version"] semver ">=1 <2" or '
                        'label["version"] semver ">=3"')
    assert rule.evaluate(Facts(labels={"org.opencontainers.image.version": "1.4.0"}))
    assert rule.evaluate(Facts(labels={"version": "v3.0.1-debian"}))
    assert not rule.evaluate(Facts(labels={"version": "2.9"}))
    assert not rule.evaluate(Facts())  # a missing label is "", not a version
    assert rule.required_facts == {FactKind.MANIFEST}
    assert compile_rule('tag semver ">=1"').required_facts == {FactKind.REFERENCE}
    assert compile_rule('tag semver ">=1"').fields == {"tag"}


def test_explanation_shows_how_the_tag_was_read() -> None:
    rule = compile_rule('tag semver ">=1.25 <2" and tag endswith "alpine"')
    [version, suffix] = rule.explain(Facts(tag="v1.25.3-alpine")).clauses
    assert version.clause == 'tag semver ">=1.25 <2"'
    assert version.value == '"v1.25.3-alpine" (1.25.3)'
    assert version.result and (version.line, version.column) == (1, 1)
    assert suffix.value == '"v1.25.3-alpine"'
    [clause] = compile_rule('tag semver ">=1"').explain(Facts(tag="latest")).clauses
    assert clause.value == '"latest" (not a version)' and not clause.result


def only_error(rule: str) -> tuple[int, int, str, str]:
    with pytest.raises(RuleCompileError) as exc:
        compile_rule(rule)
    [error] = exc.value.errors
    return error.line, error.column, error.offending_text, error.message


@pytest.mark.parametrize(("rule", "line", "column", "offending", "needle"), [
    ('tag semver ">=x"', 1, 15, "x", "'x' is not a version"),
    ('tag semver ">=1.25 <2.x"', 1, 21, "2.x", "'2.x' is not a version"),
    ('tag semver ""', 1, 12, '""', "the range is empty"),
    ('tag semver "   "', 1, 12, '"   "', "the range is empty"),
    ('tag semver ">=1 ||"', 1, 17, "||", "an empty alternative"),
    ('tag semver "|| >=1"', 1, 13, "||", "an empty alternative"),
    ('tag semver ">=1 || || <3"', 1, 20, "||", "an empty alternative"),
    ('tag semver ">=1 | <3"', 1, 17, "|", "'|' alone"),
    ('tag semver ">="', 1, 13, ">", "expected a version after '>='"),
    ('tag semver ">=1 <"', 1, 17, "<", "expected a version after '<'"),
    ('tag semver ">=1.25.3-rc.1"', 1, 15, "1.25.3-rc.1", "release numbers only"),
    ('tag semver "~1.2"', 1, 13, "~1.2", "'~1.2' is not a version"),
    ('tag semver "01.2"', 1, 13, "01.2", "is not a version"),
    ('tag semver "1.2.3.4"', 1, 13, "1.2.3.4", "is not a version"),
    ('tag == "a" and\n  tag semver "< 2 >=q"', 2, 21, "q", "'q' is not a version"),
    # An escape in the string: the column is the string's own.
    ('tag semver "\\u003e=q"', 1, 12, '"\\u003e=q"', "'q' is not a version"),
])
def test_a_bad_range_is_an_error_at_its_position(rule: str, line: int, column: int,
                                                 offending: str, needle: str) -> None:
    got = only_error(rule)
    assert got[:3] == (line, column, offending)
    assert got[3].startswith("invalid version range: ") and needle in got[3]


def test_semver_on_a_set_field_or_with_a_number_is_a_type_error() -> None:
    line, column, _, message = only_error('component semver ">=1"')
    assert (line, column) == (1, 11)
    assert "operator 'semver' does not apply to 'component', a set of strings" in message
    assert "semver" not in message.split("expected one of", 1)[1]
    assert "expects a string, got a number" in only_error("tag semver 2")[3]
    assert "does not apply to 'size'" in only_error('size semver ">=1"')[3]


def test_every_bad_range_of_a_rule_is_reported() -> None:
    with pytest.raises(RuleCompileError) as exc:
        compile_rule('tag semver ">=x" or label["v"] semver "" or tag semver ">=1"')
    assert [(e.line, e.column) for e in exc.value.errors] == [(1, 15), (1, 39)]


def test_semver_is_a_keyword_and_a_misspelling_is_suggested() -> None:
    _, column, offending, message = only_error('tag semvr ">=1"')
    assert (column, offending) == (5, "semvr") and "did you mean 'semver'?" in message
