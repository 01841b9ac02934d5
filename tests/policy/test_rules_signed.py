"""`signed` and `signed_by "KEY"` in the rule language: truth over verified signatures, what an
explanation says, the facts and keys a rule reports, errors, and the compiled facts crossing a
real worker process (the RuleGuard's)."""

from __future__ import annotations

import pickle

import pytest
from mirror.v1 import common_pb2

from policy_service.rules import FactKind, Facts, RuleCompileError, compile_rule
from policy_service.rules.facts import SignatureFact
from policy_service.rules.guard import CheckedRule, RuleGuard, _check
from policy_service.rules.signed import MAX_PROBLEMS, PROBLEM_CHARS

ANOTHER_KEY = "signed by another key (none of the trusted keys verifies it)"
CI = SignatureFact("sha256:aa", verified_by=("ci",))
CI_AND_RELEASE = SignatureFact("sha256:ab", verified_by=("ci", "release"))
RELEASE = SignatureFact("sha256:bb", verified_by=("release",))
UNTRUSTED = SignatureFact("sha256:cc", problem=ANOTHER_KEY)
OTHER_DIGEST = SignatureFact("sha256:dd", problem="the payload names another digest")


def facts(*sigs: object) -> Facts:
    return Facts(tag="1.0", signatures=tuple(sigs))  # type: ignore[arg-type]


@pytest.mark.parametrize(("sigs", "signed", "by_ci"), [
    ((), False, False),
    ((UNTRUSTED,), False, False),
    ((UNTRUSTED, OTHER_DIGEST), False, False),
    ((CI,), True, True),
    ((RELEASE,), True, False),
    ((UNTRUSTED, RELEASE), True, False),
    ((UNTRUSTED, CI), True, True),
    ((CI_AND_RELEASE,), True, True),
])
def test_truth_table(sigs: tuple[SignatureFact, ...], signed: bool, by_ci: bool) -> None:
    f = facts(*sigs)
    assert compile_rule("signed").evaluate(f) is signed
    assert compile_rule('signed_by "ci"').evaluate(f) is by_ci
    assert compile_rule("not signed").evaluate(f) is not signed
    assert compile_rule('signed_by "release" or signed_by "ci"').evaluate(f) is (
        any(s.verified_by for s in sigs if set(s.verified_by) & {"ci", "release"}))
    assert compile_rule('signed and tag == "1.0"').explain(f).result is signed


def test_the_proto_signature_fact_works_as_well() -> None:
    proto = common_pb2.SignatureFact(manifest_digest="sha256:aa", verified_by=["ci"])
    bad = common_pb2.SignatureFact(manifest_digest="sha256:cc", problem=ANOTHER_KEY)
    assert compile_rule('signed_by "ci"').evaluate(facts(proto))
    assert not compile_rule('signed_by "c"').evaluate(facts(proto))  # a key, not a substring
    assert not compile_rule("signed").evaluate(facts(bad))
    [clause] = compile_rule('signed_by "ci"').explain(facts(bad, proto)).clauses
    assert clause.value == 'verified by "ci"'


def explained(rule: str, *sigs: object) -> tuple[str, bool]:
    [clause] = compile_rule(rule).explain(facts(*sigs)).clauses
    return clause.value, clause.result


def test_explanations_name_the_key_that_verified() -> None:
    assert explained("signed", CI) == ('verified by "ci"', True)
    assert explained("signed", UNTRUSTED, CI_AND_RELEASE, RELEASE) == (
        'verified by "ci", "release"', True)
    assert explained('signed_by "release"', CI_AND_RELEASE) == ('verified by "release"', True)


def test_explanations_say_why_no_signature_did() -> None:
    assert explained("signed") == ("no signature", False)
    assert explained('signed_by "ci"') == ("no signature", False)
    assert explained('signed_by "ci"', RELEASE) == (
        'signed by another key: verified by "release"', False)
    assert explained('signed_by "ci"', UNTRUSTED) == (f"none verified: {ANOTHER_KEY}", False)
    assert explained("signed", UNTRUSTED, OTHER_DIGEST, UNTRUSTED) == (
        f"3 signatures, none verified: {ANOTHER_KEY}; the payload names another digest", False)
    # A signature whose problem nobody filled in (EvaluateRule's caller-stated facts).
    assert explained("signed", SignatureFact("sha256:ee")) == ("none verified: not verified",
                                                              False)


def test_an_explanation_stays_small_whatever_the_facts_hold() -> None:
    many = [SignatureFact(f"sha256:{i}", problem=f"problem {i} " + "x" * 1000)
            for i in range(50)]
    value, held = explained("signed", *many)
    assert not held
    assert value.startswith("50 signatures, none verified: problem 0 ")
    assert value.endswith(f"; and {50 - MAX_PROBLEMS} more")
    assert len(value) < (PROBLEM_CHARS + 2) * MAX_PROBLEMS + 100


def test_clauses_come_in_source_order_with_positions() -> None:
    rule = compile_rule('tag == "1.0" and\n  (signed_by "ci" or not signed)')
    clauses = rule.explain(facts(CI)).clauses
    assert [(c.clause, c.line, c.column, c.result) for c in clauses] == [
        ('tag == "1.0"', 1, 1, True), ('signed_by "ci"', 2, 4, True), ("signed", 2, 26, True)]


def test_required_facts_fields_and_keys() -> None:
    rule = compile_rule('signed_by "ci" or (signed_by "release" and critical_vulns == 0)')
    assert rule.required_facts == {FactKind.SIGNATURES, FactKind.VULNERABILITIES}
    assert rule.fields == {"signed_by", "critical_vulns"}
    assert rule.signed_by_keys == {"ci", "release"}
    plain = compile_rule("signed")
    assert plain.required_facts == {FactKind.SIGNATURES}
    assert plain.fields == {"signed"} and plain.signed_by_keys == frozenset()
    assert compile_rule('tag == "signed_by \\"ci\\""').signed_by_keys == frozenset()
    assert FactKind.SIGNATURES not in compile_rule('tag == "x"').required_facts
    # A key name is a string literal like any other: its escapes are decoded.
    assert compile_rule('signed_by "c\\u0069"').signed_by_keys == {"ci"}


@pytest.mark.parametrize(("rule", "line", "column", "needle"), [
    ('signed_by ""', 1, 11, "signed_by needs the name of a trusted key"),
    ('signed_by "  "', 1, 11, "signed_by needs the name of a trusted key"),
    ("signed_by", 1, 10, "unexpected end of rule; expected a string"),
    ("signed_by ci", 1, 11, "unexpected word 'ci'; expected a string"),
    ('signed_by ["ci"]', 1, 11, "unexpected '['; expected a string"),
    ('signed == "x"', 1, 8, "unexpected '=='"),
    ('signed_by "ci" == "x"', 1, 16, "unexpected '=='"),
    ('signd_by "ci"', 1, 1, "unexpected word 'signd_by' before a string; did you mean "
     "'signed_by'?"),
    ('tag == "a" and\n signed "ci"', 2, 2, "unexpected word 'signed' before a string; did you "
     "mean 'signed_by'?"),
    ('tag "ci"', 1, 5, "unexpected string"),  # a field name is no misspelt keyword
    ('signed_by "\\q"', 1, 12, "unknown escape"),
])
def test_errors(rule: str, line: int, column: int, needle: str) -> None:
    with pytest.raises(RuleCompileError) as exc:
        compile_rule(rule)
    [error] = exc.value.errors
    assert (error.line, error.column) == (line, column)
    assert needle in error.message


def test_signed_settles_pending_nots_for_the_depth_limit() -> None:
    # 64 'not's around one clause is the deepest allowed; 65 is refused.
    assert compile_rule("not " * 63 + "signed").evaluate(facts()) is True
    with pytest.raises(RuleCompileError, match="nested too deeply"):
        compile_rule("not " * 65 + 'signed_by "ci"')
    # Flat: each 'not' is settled by its own clause, so depth never grows.
    assert compile_rule(" and ".join(["not signed"] * 70)).evaluate(facts())


def test_what_a_worker_sends_back_is_picklable_and_names_the_keys() -> None:
    problems, checked = _check('signed_by "ci" and tag semver ">=1"')
    assert problems == [] and checked is not None
    assert pickle.loads(pickle.dumps(checked)) == CheckedRule(
        frozenset({"signed_by", "tag"}), frozenset({FactKind.SIGNATURES, FactKind.REFERENCE}),
        frozenset({"ci"}))
    problems, checked = _check('tag semver ">=x"')
    assert checked is None and pickle.loads(pickle.dumps(problems))[0].column == 15
    # Facts with signatures cross a process boundary (EvaluateRule in a worker).
    f = facts(CI, common_pb2.SignatureFact(verified_by=["release"]))
    assert compile_rule('signed_by "release"').evaluate(pickle.loads(pickle.dumps(f)))


async def test_the_guard_compiles_in_a_worker_and_returns_the_keys() -> None:
    guard = RuleGuard(rate="", deadline=20.0, workers=1)
    try:
        checked = await guard.compile('signed_by "ci" or signed_by "release"')
        assert checked.signed_by_keys == {"ci", "release"}
        assert FactKind.SIGNATURES in checked.required_facts
        with pytest.raises(RuleCompileError) as exc:
            await guard.compile('signed_by "" or tag semver "<"')
        assert [(e.line, e.column) for e in exc.value.errors] == [(1, 11), (1, 29)]
    finally:
        guard.close()
