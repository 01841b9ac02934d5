"""Compile errors of the rule language: each kind, with its exact line and column, in human
words; and the size and depth limits, which must never crash."""

from __future__ import annotations

import re

import pytest

from policy_service.rules import MAX_DEPTH, MAX_RULE_BYTES, Facts, RuleCompileError, compile_rule
from policy_service.rules.errors import RuleErrorInfo
from policy_service.rules.syntax import TERMINAL_WORDS, parser

# Lark internals that must never reach a user.
FACTS_NONE = Facts()
FACTS_T399 = Facts(tag="t399")
INTERNAL = re.compile(
    r"__ANON|ESCAPED_STRING|\$END|Token\(|Tree\(|"
    + "|".join(rf"\b{re.escape(t.name)}\b" for t in parser().terminals))


def errors_of(rule: str, **limits: int) -> list[RuleErrorInfo]:
    with pytest.raises(RuleCompileError) as info:
        compile_rule(rule, **limits)
    for error in info.value.errors:
        assert error.line >= 1 and error.column >= 1
        for text in (error.message, *error.expected):
            assert not INTERNAL.search(text), text
    return info.value.errors


def only_error(rule: str, **limits: int) -> RuleErrorInfo:
    errors = errors_of(rule, **limits)
    assert len(errors) == 1, errors
    return errors[0]


def test_unknown_field_suggests_the_nearest() -> None:
    error = only_error("critcal_vulns <= 3")
    assert (error.line, error.column) == (1, 1)
    assert error.message == "unknown field 'critcal_vulns'; did you mean 'critical_vulns'?"
    assert error.suggestion == "critical_vulns"
    assert error.offending_text == "critcal_vulns"
    assert "critical_vulns" in error.expected


def test_unknown_field_without_a_near_name_lists_the_fields() -> None:
    error = only_error('xyz == "a"')
    assert error.suggestion == ""
    assert 'label["KEY"]' in error.message and "tag" in error.message


def test_unknown_field_on_a_later_line() -> None:
    error = only_error('tag == "a"\n  and  licence == "MIT"')
    assert (error.line, error.column) == (2, 8)
    assert error.suggestion == "license"


@pytest.mark.parametrize(("rule", "column", "offending", "needle"), [
    ("tag > 3", 5, ">", "operator '>' does not apply to 'tag', a string"),
    ('critical_vulns startswith "a"', 16, "startswith", "operator 'startswith' does not apply"),
    ('component < 3', 11, "<", "set of strings"),
    ('size not in ["a"]', 6, "not in", "operator 'not in' does not apply to 'size'"),
    ('critical_vulns == "3"', 19, '"3"', "expected a number, got a string"),
    ("tag == 3", 8, "3", "expects a string, got a number"),
    ('tag startswith ["a"]', 16, '["a"]', "expects a string, got a list"),
    ('tag in "a"', 8, '"a"', "needs a list of strings"),
    ('tag in ["a", 2]', 14, "2", "holds strings; got a number"),
    ("critical_vulns > 1KiB", 18, "1KiB", "size suffixes"),
    ('label == "x"', 1, "label", 'label needs a key, e.g. label["KEY"]'),
    ('tag["x"] == "x"', 1, 'tag["x"]', "field 'tag' takes no key"),
    ('tag matches "(a"', 13, '"(a"', "invalid regular expression: missing ): (a"),
    ('tag matches "(a)\\\\1"', 13, '"(a)\\\\1"', "invalid regular expression"),  # no backrefs
    ("size > 99999999999999999999", 8, "99999999999999999999", "number too large"),
    ("size > 9000000TiB", 8, "9000000TiB", "number too large"),
    ('tag == "\\q"', 9, "\\q", "unknown escape '\\q'"),
    ('tag == "\\u12"', 9, "\\u12", "four hexadecimal digits"),
    ('tag == "\\ud800"', 9, "\\ud800", "surrogate"),
])
def test_type_and_literal_errors(rule: str, column: int, offending: str, needle: str) -> None:
    error = only_error(rule)
    assert (error.line, error.column) == (1, column)
    assert error.offending_text == offending
    assert needle in error.message
    assert error.expected


def test_every_type_error_is_reported_in_source_order() -> None:
    errors = errors_of('tag > 3 or\ncritical_vulns == "3" or critcal_vulns < 1\nor tag matches "["')
    assert [(e.line, e.column) for e in errors] == [(1, 5), (2, 19), (2, 26), (3, 16)]


def test_huge_number_does_not_hit_the_int_conversion_limit() -> None:
    error = only_error("size > " + "9" * 5000)
    assert "number too large" in error.message


# What may start an expression.
ATOM = ("a field name", "'not'", "'true'", "'false'", "'signed'", "'signed_by'", "'('")


@pytest.mark.parametrize(("rule", "line", "column", "offending", "expected", "needle"), [
    ('tag == ', 1, 7, "", ("a string", "a number", "'['"), "unexpected end of rule"),
    ('', 1, 1, "", ATOM, "empty rule"),
    ('  \n  ', 1, 1, "", ATOM, "empty rule"),
    ('(tag == "a"', 1, 12, "", ("')'",), "unexpected end of rule; expected ')'"),
    ('tag == "a")', 1, 11, ")", ("end of rule",), "unexpected ')'"),
    ('tag == "a" adn true', 1, 12, "adn", ("'and'", "'or'", "end of rule"), "did you mean 'and'"),
    ('"a" == tag', 1, 1, '"a"', ATOM,
     "unexpected string"),
    ('tag in ["a" "b"]', 1, 13, '"b"', ("']'", "','"), "unexpected string '\"b\"'"),
    ('tag == "a" and\n\n   or true', 3, 4, "or", ATOM, "unexpected 'or'"),
    ('tag == "a" and and', 1, 16, "and", ATOM,
     "unexpected 'and'"),
    ('not', 1, 4, "", ATOM, "end of rule"),
    ('true false', 1, 6, "false", ("'and'", "'or'", "end of rule"), "unexpected 'false'"),
    ('tag == "a" or\n  (size > 3\n', 2, 12, "", ("')'",), "end of rule"),
])
def test_syntax_errors(rule: str, line: int, column: int, offending: str,
                       expected: tuple[str, ...], needle: str) -> None:
    error = only_error(rule)
    assert (error.line, error.column) == (line, column)
    assert error.offending_text == offending
    assert error.expected == expected
    assert needle in error.message


def test_misspelt_operator_names_the_operators_in_words() -> None:
    error = only_error('tag endwith "stable"')
    assert (error.line, error.column) == (1, 5)
    assert error.suggestion == "endswith"
    assert error.expected == ("'['", "'not in'", "'=='", "'!='", "'<'", "'<='", "'>'", "'>='",
                              "'startswith'", "'endswith'", "'contains'", "'matches'", "'semver'",
                              "'in'")
    assert error.message.startswith("unexpected word 'endwith'; expected '[', 'not in', '=='")


@pytest.mark.parametrize(("rule", "column", "char", "hint"), [
    ('tag = "a"', 5, "=", "=="),
    ('tag == "a" && true', 12, "&", "and"),
    ('tag == "a" || true', 12, "|", "or"),
    ("!true", 1, "!", "not"),
    ("tag == 'a'", 8, "'", '"'),
    ('tag == "a" ; true', 12, ";", ""),
])
def test_unexpected_characters(rule: str, column: int, char: str, hint: str) -> None:
    error = only_error(rule)
    assert (error.line, error.column) == (1, column)
    assert error.offending_text == char
    assert error.message.startswith(f"unexpected character {char!r}")
    assert error.suggestion == hint


def test_unterminated_string() -> None:
    error = only_error('tag == "a" or\n  tag == "abc\n  or true')
    assert (error.line, error.column) == (2, 10)
    assert error.message.startswith("unterminated string")
    assert error.offending_text == '"abc'


def test_only_the_first_syntax_error_is_reported() -> None:
    assert len(errors_of("tag == == or ) (")) == 1


def test_every_terminal_has_human_words() -> None:
    assert {t.name for t in parser().terminals} <= set(TERMINAL_WORDS)


# ---------------------------------------------------------------------------------------------
# limits

def test_rule_of_exactly_the_size_limit_compiles() -> None:
    clause = "true and "
    body = clause * ((MAX_RULE_BYTES - 4) // len(clause))
    text = body + "true"
    text += " " * (MAX_RULE_BYTES - len(text))
    assert len(text.encode()) == MAX_RULE_BYTES
    rule = compile_rule(text)
    assert rule.evaluate(FACTS_NONE) is True
    assert len(rule.explain(FACTS_NONE).clauses) == 0


def test_long_flat_rule_of_comparisons_compiles_and_explains() -> None:
    text = " or ".join(f'tag == "t{i}"' for i in range(400))
    assert len(text) <= MAX_RULE_BYTES
    rule = compile_rule(text)
    assert rule.evaluate(FACTS_T399)
    explanation = rule.explain(FACTS_T399)
    assert len(explanation.clauses) == 400 and explanation.result is True


def test_rule_over_the_size_limit_is_refused_at_the_limit() -> None:
    text = 'tag == "' + "x" * MAX_RULE_BYTES + '"'
    error = only_error(text)
    assert (error.line, error.column) == (1, MAX_RULE_BYTES + 1)
    assert error.message == (f"rule is too long: {MAX_RULE_BYTES + 9} bytes, "
                             f"the limit is {MAX_RULE_BYTES} bytes")


def test_size_limit_counts_utf8_bytes_and_reports_characters() -> None:
    text = 'tag == "' + "é" * 5000 + '"'   # 10,009 bytes, 5,009 characters
    error = only_error(text)
    assert (error.line, error.column) == (1, 8 + (MAX_RULE_BYTES - 8) // 2 + 1)


def test_depth_limit_is_exactly_64() -> None:
    deepest = "(" * MAX_DEPTH + "true" + ")" * MAX_DEPTH
    assert compile_rule(deepest).evaluate(FACTS_NONE) is True
    error = only_error("(" * (MAX_DEPTH + 1) + "true" + ")" * (MAX_DEPTH + 1))
    assert (error.line, error.column) == (1, MAX_DEPTH + 1)
    assert "nested too deeply" in error.message and "64" in error.message


def test_depth_counts_not_and_parentheses_together() -> None:
    ok = "not (" * 32 + "true" + ")" * 32
    assert compile_rule(ok).evaluate(FACTS_NONE) is True
    error = only_error("not (" * 32 + "not true" + ")" * 32)
    assert (error.line, error.column) == (1, 32 * 5 + 1)


def test_depth_is_nesting_not_length() -> None:
    # 200 sibling groups at depth 2 and many 'not's side by side are fine.
    assert compile_rule(" and ".join(["((true))"] * 200)).evaluate(FACTS_NONE)
    assert not compile_rule(" or ".join(["not true"] * 500)).evaluate(FACTS_NONE)
    assert compile_rule(" and ".join(['tag not in ["x"]'] * 100)).evaluate(FACTS_NONE)
    assert compile_rule("not " * 63 + 'label["k"] not in ["x"]').evaluate(FACTS_NONE) is False


def test_not_chain_depth_limit() -> None:
    assert compile_rule("not " * MAX_DEPTH + "true").evaluate(FACTS_NONE) is True
    error = only_error("not " * (MAX_DEPTH + 1) + "true")
    assert (error.line, error.column) == (1, MAX_DEPTH * 4 + 1)


@pytest.mark.parametrize("text", [
    "(" * 100_000,
    "(" * 100_000 + "true" + ")" * 100_000,
    "not " * 100_000 + "true",
    "not (" * 50_000 + "true" + ")" * 50_000,
    "\n".join(["("] * 100_000),
])
def test_pathological_nesting_gives_a_clean_error(text: str) -> None:
    # With the default size limit these are "too long"...
    assert "too long" in only_error(text).message
    # ...and with the size limit lifted, the depth check still refuses them before any
    # recursion happens (no RecursionError, no crash).
    assert "nested too deeply" in only_error(text, max_bytes=10**7).message


def test_many_closing_parentheses_are_a_syntax_error() -> None:
    error = only_error("true" + ")" * 100_000, max_bytes=10**7)
    assert (error.line, error.column) == (1, 5)




def test_not_and_parentheses_inside_strings_and_names_do_not_count() -> None:
    text = 'tag == "' + "not (" * 100 + '" or label["' + "nothing" * 20 + '"] == "x"'
    rule = compile_rule(text)
    assert rule.evaluate(Facts(tag="not (" * 100))
    assert rule.evaluate(Facts(labels={"nothing" * 20: "x"}))
    assert not rule.evaluate(Facts(tag="not ("))
