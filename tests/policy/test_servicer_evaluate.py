"""PolicyService ValidateRule, Evaluate, EvaluateRule and GetFactRequirements over a real
grpc.aio server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import field_mask_pb2, timestamp_pb2
from mirror.v1 import common_pb2, policy_pb2

from policy_service import compiled
from servicekit.metrics import REGISTRY
from tests.policy.policy_servicer_support import (  # noqa: F401  (fixtures)
    SEED_RULE,
    PolicyEnv,
    env,
    field_violations,
    policy,
    transfer_double,
)

K = common_pb2
WHEN = datetime(2026, 11, 26, 15, 30, 5, tzinfo=UTC)


def _ts(d: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(d)
    return ts


def _facts(repository: str = "dev/website", tag: str = "1.4-stable", critical: int = 2,
           **kw: object) -> common_pb2.ImageFacts:
    """Facts with vulnerability data updated an hour ago (fresh) unless told otherwise."""
    kw.setdefault("vulnerability_data_time", _ts(datetime.now(UTC) - timedelta(hours=1)))
    return common_pb2.ImageFacts(
        repository=repository, tag=tag,
        vulnerabilities=common_pb2.VulnerabilityCounts(critical=critical), **kw,  # type: ignore[arg-type]
    )


async def _add(env: PolicyEnv, **kw: object) -> policy_pb2.Policy:  # noqa: F811
    return await env.stub.CreatePolicy(policy_pb2.CreatePolicyRequest(policy=policy(**kw)))


async def _evaluate(env: PolicyEnv, facts: common_pb2.ImageFacts,  # noqa: F811
                    explain: bool = False, endpoint: str = "dev") -> policy_pb2.EvaluateResponse:
    return await env.stub.Evaluate(
        policy_pb2.EvaluateRequest(
            endpoint=endpoint, facts=facts, explain=explain, evaluation_time=_ts(WHEN)
        )
    )


async def test_seed_policy_renders_the_promotion_time(env: PolicyEnv) -> None:  # noqa: F811
    p = await _add(env, tag_template="%Y%m%d-%H%M")
    resp = await _evaluate(env, _facts())
    [r] = resp.results
    assert (r.policy_id, r.policy_name, r.matched, r.tag) == (
        p.id, "promote-website", True, "20261126-1530"
    )
    assert (r.target.endpoint, r.target.repository) == ("qa", "qa/website")
    assert r.reason == "" and not r.HasField("explanation")
    assert list(resp.required_facts) == [K.FACT_KIND_REFERENCE, K.FACT_KIND_VULNERABILITIES]


async def test_template_renders_in_the_policy_time_zone(env: PolicyEnv) -> None:  # noqa: F811
    await _add(env, name="paris", tag_template="%n-%H%M%Z", time_zone="Europe/Paris")
    await _add(env, name="tokyo", tag_template="%Y%m%d%H", time_zone="Asia/Tokyo")
    await _add(env, name="utc", tag_template="%Y%m%d%H")  # same template, other zone
    await _add(env, name="keep")
    resp = await _evaluate(env, _facts())
    assert [(r.policy_name, r.tag) for r in resp.results] == [
        ("keep", "1.4-stable"), ("paris", "1.4-stable-1630CET"), ("tokyo", "2026112700"),
        ("utc", "2026112615"),
    ]


async def test_evaluation_time_defaults_to_now(env: PolicyEnv) -> None:  # noqa: F811
    await _add(env, tag_template="%Y%m%d")
    before = datetime.now(UTC).strftime("%Y%m%d")
    resp = await env.stub.Evaluate(policy_pb2.EvaluateRequest(endpoint="dev", facts=_facts()))
    after = datetime.now(UTC).strftime("%Y%m%d")
    assert resp.results[0].tag in {before, after}


async def test_rule_outcomes(env: PolicyEnv) -> None:  # noqa: F811
    await _add(env)
    cases = [("1.4-stable", 3, True), ("1.4-stable", 4, False), ("1.4-beta", 0, False)]
    for tag, critical, expected in cases:
        [r] = (await _evaluate(env, _facts(tag=tag, critical=critical))).results
        assert r.matched is expected, (tag, critical)
        assert r.tag == (tag if expected else "")


async def test_glob_sources_and_disabled_policies(env: PolicyEnv) -> None:  # noqa: F811
    await _add(env, name="exact", source="dev/website")
    await _add(env, name="one", source="dev/*")
    await _add(env, name="deep", source="dev/**", rule='component == "bash"')
    await _add(env, name="off", source="dev/**", enabled=False,
               rule='license in ["MIT"]')
    await _add(env, name="prod", source="prod/*")

    resp = await _evaluate(env, _facts())
    assert [r.policy_name for r in resp.results] == ["deep", "exact", "one"]
    assert [r.matched for r in resp.results] == [False, True, True]
    # The disabled policy's licence requirement is not part of the union.
    assert list(resp.required_facts) == [
        K.FACT_KIND_REFERENCE, K.FACT_KIND_COMPONENTS, K.FACT_KIND_VULNERABILITIES,
    ]
    deep = await _evaluate(env, _facts(repository="dev/team/website"))
    assert [r.policy_name for r in deep.results] == ["deep"]
    assert list(deep.required_facts) == [K.FACT_KIND_COMPONENTS]
    assert list((await _evaluate(env, _facts(repository="qa/website"))).results) == []


async def test_enabling_a_policy_makes_it_evaluated(env: PolicyEnv) -> None:  # noqa: F811
    p = await _add(env, enabled=False)
    assert list((await _evaluate(env, _facts())).results) == []
    await env.stub.UpdatePolicy(
        policy_pb2.UpdatePolicyRequest(
            policy=policy_pb2.Policy(id=p.id, enabled=True),
            update_mask=field_mask_pb2.FieldMask(paths=["enabled"]),
        )
    )
    [r] = (await _evaluate(env, _facts())).results
    assert r.matched


async def test_missing_facts_do_not_match_and_say_why(env: PolicyEnv) -> None:  # noqa: F811
    await _add(env, name="vulns")  # needs vulnerability counts
    await _add(env, name="tag-only", rule='tag endswith "stable"')
    # The scan did not run: vulnerability counts are absent, not zero.
    facts = _facts(critical=0, present=[K.FACT_KIND_REFERENCE, K.FACT_KIND_MANIFEST])
    resp = await _evaluate(env, facts, explain=True)
    tag_only, vulns = resp.results
    assert tag_only.matched and tag_only.reason == ""
    assert not vulns.matched and vulns.blocked and vulns.tag == ""
    assert not tag_only.blocked
    assert vulns.reason == "needs vulnerability facts, which were not provided"
    assert list(vulns.explanation.missing_facts) == [K.FACT_KIND_VULNERABILITIES]
    assert list(vulns.explanation.clauses) == []  # never evaluated with zero values
    # With every kind present the same facts match.
    resp = await _evaluate(env, _facts(critical=0))
    assert all(r.matched for r in resp.results)


async def test_explanation_reports_each_clause(env: PolicyEnv) -> None:  # noqa: F811
    await _add(env)
    [r] = (await _evaluate(env, _facts(critical=5), explain=True)).results
    assert not r.matched
    assert not r.explanation.result
    assert [(c.clause, c.value, c.result, c.line, c.column) for c in r.explanation.clauses] == [
        ('tag endswith "stable"', '"1.4-stable"', True, 1, 1),
        ("critical_vulns <= 3", "5", False, 1, 27),
    ]


async def test_unrenderable_tag_does_not_match(env: PolicyEnv) -> None:  # noqa: F811
    await _add(env, rule="true", tag_template="x" * 100 + "%n")
    [r] = (await _evaluate(env, _facts(tag="t" * 40))).results
    assert not r.matched and r.tag == ""
    assert "cannot be applied" in r.reason and "not a valid tag" in r.reason


async def test_evaluate_needs_a_repository(env: PolicyEnv) -> None:  # noqa: F811
    with pytest.raises(grpc.RpcError) as exc:
        await _evaluate(env, common_pb2.ImageFacts(tag="x"))
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "facts.repository" in field_violations(exc.value)


async def test_evaluate_counts_evaluations(env: PolicyEnv) -> None:  # noqa: F811
    def count(matched: str) -> float:
        v = REGISTRY.get_sample_value("mirror_policy_evaluations_total", {"matched": matched})
        return v or 0.0

    await _add(env, name="a")
    await _add(env, name="b", rule="false")
    t0, f0 = count("true"), count("false")
    await _evaluate(env, _facts())
    await _evaluate(env, _facts())
    assert (count("true") - t0, count("false") - f0) == (2, 2)


async def test_rules_compile_once_per_policy_version(
    env: PolicyEnv, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    p = await _add(env)
    calls = []
    real = compiled.compile_rule

    def counting(text: str) -> object:
        calls.append(text)
        return real(text)

    monkeypatch.setattr(compiled, "compile_rule", counting)
    for _ in range(5):
        await _evaluate(env, _facts())
    assert calls == []
    await env.stub.UpdatePolicy(
        policy_pb2.UpdatePolicyRequest(
            policy=policy_pb2.Policy(id=p.id, rule="true"),
            update_mask=field_mask_pb2.FieldMask(paths=["rule"]),
        )
    )
    for _ in range(5):
        await _evaluate(env, _facts())
    assert calls == ["true"]


async def test_validate_rule_reports_fields_and_requirements(env: PolicyEnv) -> None:  # noqa: F811
    resp = await env.stub.ValidateRule(policy_pb2.ValidateRuleRequest(rule=SEED_RULE))
    assert resp.valid and list(resp.errors) == [] and list(resp.template_errors) == []
    assert list(resp.fields) == ["critical_vulns", "tag"]
    assert list(resp.required_facts) == [K.FACT_KIND_REFERENCE, K.FACT_KIND_VULNERABILITIES]


async def test_validate_rule_reports_positioned_errors(env: PolicyEnv) -> None:  # noqa: F811
    resp = await env.stub.ValidateRule(
        policy_pb2.ValidateRuleRequest(rule='tag endswith "stable" and\n  critcal_vulns <= 3')
    )
    assert not resp.valid
    [e] = resp.errors
    assert (e.line, e.column, e.offending_text, e.suggestion) == (
        2, 3, "critcal_vulns", "critical_vulns"
    )
    assert "unknown field" in e.message and "critical_vulns" in e.expected
    assert list(resp.fields) == []


async def test_validate_rule_checks_template_and_zone(env: PolicyEnv) -> None:  # noqa: F811
    resp = await env.stub.ValidateRule(
        policy_pb2.ValidateRuleRequest(rule="true", tag_template="%Y-%Q", time_zone="Mars/Base")
    )
    assert not resp.valid and list(resp.errors) == []
    assert len(resp.template_errors) == 2
    assert resp.template_errors[0].startswith("time_zone: unknown time zone 'Mars/Base'")
    assert resp.template_errors[1].startswith("tag_template: unknown specifier '%Q'")
    ok = await env.stub.ValidateRule(
        policy_pb2.ValidateRuleRequest(rule="true", tag_template="%n-%H", time_zone="Asia/Tokyo")
    )
    assert ok.valid


async def test_evaluate_rule_explains(env: PolicyEnv) -> None:  # noqa: F811
    comps = [common_pb2.Component(name="bash", version="5.2", licenses=["GPL-3.0-only"])]
    resp = await env.stub.EvaluateRule(
        policy_pb2.EvaluateRuleRequest(
            rule='component == "bash" and not license in ["MIT"]',
            facts=_facts(components=comps),
        )
    )
    assert resp.matched and resp.explanation.result
    assert [(c.clause, c.result) for c in resp.explanation.clauses] == [
        ('component == "bash"', True), ('license in ["MIT"]', False),
    ]
    missing = await env.stub.EvaluateRule(
        policy_pb2.EvaluateRuleRequest(
            rule='component == "bash"',
            facts=_facts(components=comps, present=[K.FACT_KIND_REFERENCE]),
        )
    )
    assert not missing.matched
    assert list(missing.explanation.missing_facts) == [K.FACT_KIND_COMPONENTS]


async def test_evaluate_rule_refuses_a_bad_rule(env: PolicyEnv) -> None:  # noqa: F811
    with pytest.raises(grpc.RpcError) as exc:
        await env.stub.EvaluateRule(
            policy_pb2.EvaluateRuleRequest(rule="critcal_vulns < 1", facts=_facts())
        )
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(exc.value) == {
        "rule": "line 1, column 1: unknown field 'critcal_vulns'; did you mean 'critical_vulns'?"
    }


async def test_fact_requirements(env: PolicyEnv) -> None:  # noqa: F811
    await _add(env, name="a")
    await _add(env, name="b", source="dev/*", rule='license in ["MIT"]')
    await _add(env, name="c", enabled=False, rule='component == "x"')
    req = await env.stub.GetFactRequirements(
        policy_pb2.GetFactRequirementsRequest(endpoint="dev", repository="dev/website")
    )
    assert (req.repository, req.policy_count) == ("dev/website", 2)
    assert list(req.kinds) == [
        K.FACT_KIND_REFERENCE, K.FACT_KIND_LICENSES, K.FACT_KIND_VULNERABILITIES,
    ]
    none = await env.stub.GetFactRequirements(
        policy_pb2.GetFactRequirementsRequest(endpoint="dev", repository="ops/tools")
    )
    assert (none.policy_count, list(none.kinds)) == (0, [])
    with pytest.raises(grpc.RpcError) as exc:
        await env.stub.GetFactRequirements(policy_pb2.GetFactRequirementsRequest())
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
