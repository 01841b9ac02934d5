"""`tag semver` over a real grpc.aio policy server: ValidateRule reports a bad range at its
column, CreatePolicy refuses it with INVALID_ARGUMENT, and Evaluate picks the tags of a range
with an explanation that says how the tag was read."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2
from mirror.v1 import common_pb2, policy_pb2

from tests.policy.policy_servicer_support import (  # noqa: F401  (fixtures)
    PolicyEnv,
    details,
    env,
    policy,
    transfer_double,
)

RANGE_RULE = 'tag semver ">=1.25 <2"'


async def test_validate_rule_points_into_the_range(env: PolicyEnv) -> None:  # noqa: F811
    resp = await env.stub.ValidateRule(policy_pb2.ValidateRuleRequest(
        rule='tag endswith "alpine" and\n  tag semver ">=1.25 <2.x"'))
    assert not resp.valid
    [error] = resp.errors
    assert (error.line, error.column, error.offending_text) == (2, 23, "2.x")
    assert error.message.startswith("invalid version range: '2.x' is not a version")
    ok = await env.stub.ValidateRule(policy_pb2.ValidateRuleRequest(rule=RANGE_RULE))
    assert ok.valid and list(ok.fields) == ["tag"]
    assert list(ok.required_facts) == [common_pb2.FACT_KIND_REFERENCE]


async def test_create_policy_refuses_a_bad_range(env: PolicyEnv) -> None:  # noqa: F811
    with pytest.raises(grpc.RpcError) as info:
        await env.stub.CreatePolicy(policy_pb2.CreatePolicyRequest(
            policy=policy(rule='tag semver ">=1 | <3"')))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    [br] = details(info.value, error_details_pb2.BadRequest)
    [violation] = br.field_violations  # type: ignore[attr-defined]
    assert violation.description.startswith(
        "line 1, column 17: invalid version range: '|' alone")


async def test_evaluate_picks_the_tags_of_the_range(env: PolicyEnv) -> None:  # noqa: F811
    await env.stub.CreatePolicy(policy_pb2.CreatePolicyRequest(policy=policy(rule=RANGE_RULE)))
    picked = []
    for tag in ["1.24.9", "1.25", "v1.25.3", "1.25.3-alpine", "1.99.0", "2.0.0", "latest"]:
        resp = await env.stub.Evaluate(policy_pb2.EvaluateRequest(
            endpoint="dev", explain=True,
            facts=common_pb2.ImageFacts(repository="dev/website", tag=tag,
                                        digest="sha256:" + "a" * 64)))
        [result] = resp.results
        [clause] = result.explanation.clauses
        assert clause.result is result.matched
        if result.matched:
            picked.append(tag)
        if tag == "1.25.3-alpine":
            assert clause.value == '"1.25.3-alpine" (1.25.3)'
        if tag == "latest":
            assert clause.value == '"latest" (not a version)'
    assert picked == ["1.25", "v1.25.3", "1.25.3-alpine", "1.99.0"]


async def test_evaluate_rule_with_a_range(env: PolicyEnv) -> None:  # noqa: F811
    resp = await env.stub.EvaluateRule(policy_pb2.EvaluateRuleRequest(
        rule='tag semver "<1.20 || >=2 <3"',
        facts=common_pb2.ImageFacts(repository="dev/website", tag="v2.4.0-bookworm")))
    assert resp.matched
    assert resp.explanation.clauses[0].value == '"v2.4.0-bookworm" (2.4.0)'
