"""The regex budgets of the rule compiler: per-regex and per-rule RE2 program size, and the
number of regexes, each refused with a positioned error in bounded time and memory."""

from __future__ import annotations

import resource
import time

import pytest

from policy_service.rules import Facts, RuleCompileError, compile_rule
from policy_service.rules.regex import (
    MAX_REGEX_PROGRAM,
    MAX_REGEXES,
    MAX_RULE_PROGRAM,
    RegexBudget,
    RegexTooLarge,
    compile_search,
)


def errors_of(text: str) -> list[str]:
    with pytest.raises(RuleCompileError) as info:
        compile_rule(text)
    return [str(e) for e in info.value.errors]


def test_a_regex_over_its_program_budget_is_refused_at_its_position() -> None:
    # \pL is every Unicode letter: ten of them are about 12,000 RE2 instructions.
    errors = errors_of('tag == "x" or\n  tag matches "\\\\pL{10}"')
    assert len(errors) == 1
    assert errors[0].startswith("line 2, column 15: regex too large: program size 1")
    assert f"> {MAX_REGEX_PROGRAM:,} (RE2 instructions" in errors[0]


def test_a_regex_far_over_re2s_memory_is_refused_without_its_size() -> None:
    errors = errors_of('tag matches "[\\\\pL\\\\pN]{1000}"')
    assert errors == [
        f"line 1, column 13: regex too large: program size over RE2's memory limit > "
        f"{MAX_REGEX_PROGRAM:,} (RE2 instructions; use fewer or smaller repetitions and "
        "character classes)"
    ]


def test_everyday_and_fairly_large_regexes_still_compile() -> None:
    rule = compile_rule('tag matches "^v?(0|[1-9][0-9]*)\\\\.(0|[1-9][0-9]*)$" and '
                        'digest matches "^sha256:[a-f0-9]{64}$" and tag matches ".{1000}"')
    assert not rule.evaluate(Facts(tag="v1.2"))


def test_the_rules_total_program_size_is_bounded() -> None:
    # Each `.{1000}` is 8,004 instructions: five fit, the sixth crosses 40,000.
    clauses = [f'tag matches ".{{1000}}{i}"' for i in range(8)]
    errors = errors_of(" or\n".join(clauses))
    assert len(errors) == 1
    assert errors[0].startswith("line 5, column 13: regexes too large in total: program size ")
    assert f"> {MAX_RULE_PROGRAM:,} for the whole rule" in errors[0]


def test_too_many_regexes_are_refused_before_any_is_compiled() -> None:
    text = " or\n".join(f'tag matches "[\\\\pL\\\\pN]{{1000}}{i}"' for i in range(200))
    started = time.perf_counter()
    errors = errors_of(text)
    assert time.perf_counter() - started < 1.0  # compiling them would take ~3 ms each at least
    assert errors == [f"line {MAX_REGEXES + 1}, column 13: too many regular expressions: 200 > "
                      f"{MAX_REGEXES} 'matches' comparisons in one rule"]


def test_other_errors_are_still_reported_beside_a_budget_error() -> None:
    errors = errors_of('critcal_vulns < 1 or tag matches "\\\\pL{10}" or tag matches "("')
    assert errors[0].startswith("line 1, column 1: unknown field 'critcal_vulns'")
    assert "regex too large" in errors[1]
    assert "invalid regular expression: missing )" in errors[2]


def test_the_issues_rule_of_200_large_regexes_is_cheap() -> None:
    # Issue 10: a 6 KB rule of 200 large RE2 regexes took 32 s and 900 MB before the budget.
    text = " or ".join(f'tag matches "\\\\p{{Greek}}{{150}}{i:03}"' for i in range(200))
    assert 6000 < len(text) < 8192
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    errors_of(text)
    assert time.perf_counter() - started < 1.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50 * 1024  # KiB


def test_budget_counts_oversized_regexes_so_few_are_compiled() -> None:
    budget = RegexBudget(per_regex=100, total=200)
    compile_search("a{10}", budget)
    assert not budget.exhausted
    with pytest.raises(RegexTooLarge, match="program size 1,004 > 100 "):
        compile_search("a{1000}", budget)
    assert not budget.exhausted
    with pytest.raises(RegexTooLarge, match="program size 1,004 > 100 "):
        compile_search("b{1000}", budget)
    assert budget.exhausted  # each oversized one counted as 101: 14 + 101 + 101 > 200


def test_matching_is_unchanged_under_re2s_memory_ceiling() -> None:
    search = compile_search("^[0-9]+\\.[0-9]+-stable$")
    assert search("1.2-stable") and not search("1.2-dev")
    assert compile_search("é+")("café")
