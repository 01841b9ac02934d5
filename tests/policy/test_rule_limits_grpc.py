"""Untrusted rules over a real grpc.aio policy server: oversized error details still arrive as
INVALID_ARGUMENT, ValidateRule / EvaluateRule are rate-limited per caller, and a rule that
runs past its deadline is stopped while the server keeps answering."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mirror.v1 import common_pb2, policy_pb2, policy_pb2_grpc

from policy_service.rules.regex import MAX_REGEXES
from policy_service.servicer import PolicyServicer
from policy_service.store import PolicyStore
from servicekit import errors as api_errors
from servicekit.server import start_server
from tests.policy.policy_servicer_support import (  # noqa: F401  (fixtures)
    PolicyEnv,
    details,
    env,
    policy,
    transfer_double,
)

# 500 clauses naming an unknown field: 500 errors of about 100 characters each.
MANY_ERRORS_RULE = " or ".join("x < 1" for _ in range(500))


def _trailer_bytes(err: grpc.RpcError) -> int:
    md = err.trailing_metadata() or ()  # type: ignore[attr-defined]
    return sum(len(k) + len(v) for k, v in md)


async def test_500_errors_arrive_as_invalid_argument_with_the_first_ones(
    env: PolicyEnv,  # noqa: F811
) -> None:
    calls = [
        lambda: env.stub.EvaluateRule(policy_pb2.EvaluateRuleRequest(
            rule=MANY_ERRORS_RULE, facts=common_pb2.ImageFacts(repository="dev/website"))),
        lambda: env.stub.CreatePolicy(policy_pb2.CreatePolicyRequest(
            policy=policy(rule=MANY_ERRORS_RULE))),
    ]
    for call in calls:
        with pytest.raises(grpc.RpcError) as info:
            await call()
        err = info.value
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
        assert _trailer_bytes(err) < 8 * 1024
        assert len(err.details().encode()) <= api_errors.MAX_MESSAGE_BYTES
        [br] = details(err, error_details_pb2.BadRequest)
        shown = list(br.field_violations)  # type: ignore[attr-defined]
        assert 5 < len(shown) < 500
        assert shown[0].description.startswith("line 1, column 1: unknown field 'x'")
        assert shown[-1].description == f"{500 - (len(shown) - 1)} more errors not shown"


async def test_error_details_are_cut_to_the_budget_keeping_the_first() -> None:
    err = api_errors.invalid_argument(
        "x" * 100_000, [(f"f{i}", "d" * 300) for i in range(200)]
    )
    st = err.to_status()
    [(key, value)] = st.trailing_metadata
    assert key == "grpc-status-details-bin"
    assert len(value) < 4 * 1024 + api_errors.MAX_MESSAGE_BYTES
    assert len(st.details.encode()) <= api_errors.MAX_MESSAGE_BYTES
    assert st.details.endswith("(message cut; the details list the first errors)")
    few = api_errors.invalid_argument("short", [("a", "b")])
    assert few.details() == api_errors.invalid_argument("short", [("a", "b")]).details()
    assert few.wire_message() == "short"


@pytest.fixture
async def limited(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[policy_pb2_grpc.PolicyServiceStub, aio.Channel]]:
    """A policy server whose rule checks allow 3 a minute per caller and 1.5 s each."""
    monkeypatch.setenv("MIRROR_RULE_CHECK_RATE", "3/minute")
    monkeypatch.setenv("MIRROR_RULE_CHECK_DEADLINE", "1.5")
    store = PolicyStore.open(tmp_path)
    running = await start_server([PolicyServicer(store, None)], "127.0.0.1:0")
    channel = aio.insecure_channel(f"127.0.0.1:{running.port}")
    yield policy_pb2_grpc.PolicyServiceStub(channel), channel
    await channel.close()
    await running.stop(0)
    store.close()


def _as(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def test_rule_checks_are_rate_limited_per_caller(
    limited: tuple[policy_pb2_grpc.PolicyServiceStub, aio.Channel],
) -> None:
    stub, _ = limited
    request = policy_pb2.ValidateRuleRequest(rule='tag == "x"')
    for _ in range(3):
        assert (await stub.ValidateRule(request, metadata=_as("token-of-alice-0001"))).valid
    with pytest.raises(grpc.RpcError) as info:
        await stub.EvaluateRule(policy_pb2.EvaluateRuleRequest(rule="true"),
                                metadata=_as("token-of-alice-0001"))
    err = info.value
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "too many rule checks: at most 3 per 1 minute per caller;" in err.details()
    [retry] = details(err, error_details_pb2.RetryInfo)
    delay = retry.retry_delay.ToTimedelta().total_seconds()  # type: ignore[attr-defined]
    assert 30 < delay <= 60
    # another token, and callers without one (counted by peer host), have their own share
    assert (await stub.ValidateRule(request, metadata=_as("token-of-bob-00002"))).valid
    for _ in range(3):
        assert (await stub.ValidateRule(request)).valid
    with pytest.raises(grpc.RpcError) as info:
        await stub.ValidateRule(request)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_a_rule_past_its_deadline_is_stopped_while_the_server_answers(
    limited: tuple[policy_pb2_grpc.PolicyServiceStub, aio.Channel],
) -> None:
    stub, channel = limited
    health = health_pb2_grpc.HealthStub(channel)
    # Within every compile budget, but 32 regexes over 150,000 components (3 MB of facts,
    # under the message limit) take several seconds of CPU: only the deadline stops it.
    # (60,000 were enough before explanations were capped; now they can finish in 1.5 s.)
    rule = " or ".join(f'component matches "^z{i}[a-y]+$"' for i in range(MAX_REGEXES))
    facts = common_pb2.ImageFacts(repository="dev/website", components=[
        common_pb2.Component(name=f"package-{i}", version="1") for i in range(150_000)
    ])
    started = time.monotonic()
    slow = asyncio.ensure_future(stub.EvaluateRule(
        policy_pb2.EvaluateRuleRequest(rule=rule, facts=facts), metadata=_as("token-slow-00003")))
    worst = 0.0
    while not slow.done():
        t = time.monotonic()
        await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        await stub.ListPolicies(policy_pb2.ListPoliciesRequest(), timeout=5)
        worst = max(worst, time.monotonic() - t)
        await asyncio.sleep(0.05)
    with pytest.raises(grpc.RpcError) as info:
        await slow
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, info.value.details()
    assert "took longer than 1.5 s" in info.value.details()
    assert time.monotonic() - started < 5
    assert worst < 0.5, f"the server stalled for {worst:.2f} s while the rule ran"


async def test_made_up_tokens_do_not_buy_a_new_share(
    limited: tuple[policy_pb2_grpc.PolicyServiceStub, aio.Channel],
) -> None:
    # Without configured tokens any bearer value passes; its host still counts, at 4x the rate.
    stub, _ = limited
    request = policy_pb2.ValidateRuleRequest(rule="true")
    for i in range(12):
        assert (await stub.ValidateRule(request, metadata=_as(f"made-up-token-{i:04}"))).valid
    with pytest.raises(grpc.RpcError) as info:
        await stub.ValidateRule(request, metadata=_as("made-up-token-9999"))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "at most 12 per 1 minute per host" in info.value.details()
