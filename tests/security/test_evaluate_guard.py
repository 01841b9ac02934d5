"""policy_service.offload in process: where Evaluate's work runs and how it is stopped.

Small work stays inline; the service's large work runs in a thread that stops at the next
policy once its call's deadline passed (its slot is free again soon after, not when all the
policies are done); another caller's large work runs in a rule worker process, killed at the
deadline. Real compiled policies (32 in-budget regexes each) over real facts.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from mirror.v1 import common_pb2

from policy_service import compiled
from policy_service.compiled import CompiledPolicy
from policy_service.offload import INLINE_WORK, EvaluationGuard, Job, evaluate_all, work_of
from policy_service.store import PolicyRecord
from servicekit.auth import Role, Token
from servicekit.errors import ApiError

HEAVY_RULE = " or ".join(f'component matches "^z{i}[a-y]+$"' for i in range(32))


def _policy(i: int, rule: str = HEAVY_RULE) -> CompiledPolicy:
    now = time.time_ns() // 1000
    return compiled.compile_policy(PolicyRecord(
        id=f"p{i}", name=f"heavy-{i:02d}", description="", source_repository="dev/web",
        source_endpoint="dev", rule=rule, target_endpoint="qa", target_repository=f"qa/p{i}",
        tag_template="%n", time_zone="", enabled=True, create_time_us=now,
        update_time_us=now, etag="1-x", version=1,
    ), strict=False)


def _job(components: int) -> Job:
    facts = common_pb2.ImageFacts(repository="dev/web", tag="1.0", components=[
        common_pb2.Component(name=f"package-{i}", version="1") for i in range(components)
    ])
    return Job(facts, frozenset({common_pb2.FACT_KIND_COMPONENTS}), (), True,
               datetime.now(UTC), timedelta(days=7), time.time(), 0)


class Call:
    """What the guard reads of a grpc.aio ServicerContext."""

    def __init__(self, token: str, remaining: float | None = None) -> None:
        self._md = (("authorization", f"Bearer {token}"),)
        self._remaining = remaining

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._md

    def peer(self) -> str:
        return "ipv4:127.0.0.1:40000"

    def time_remaining(self) -> float | None:
        return self._remaining


TOKENS = [Token(Role.ADMIN, b"admin-token"), Token(Role.READ, b"read-token")]


def test_the_common_request_stays_inline_and_large_facts_do_not() -> None:
    small = _job(5).facts
    assert work_of(small, 11) <= INLINE_WORK  # the bench's shape: ~11 policies, 5 components
    assert work_of(_job(2000).facts, 1) > INLINE_WORK
    assert work_of(_job(300).facts, 11) > INLINE_WORK


def test_the_service_is_told_by_its_admin_token_or_by_a_server_without_tokens() -> None:
    guard = EvaluationGuard(TOKENS, workers=1)
    assert guard.is_service(Call("admin-token")) is True
    assert guard.is_service(Call("read-token")) is False
    assert guard.is_service(Call("made-up")) is False
    assert EvaluationGuard((), workers=1).is_service(Call("anything")) is True


async def test_a_service_evaluation_past_its_deadline_stops_at_the_next_policy() -> None:
    guard = EvaluationGuard(TOKENS, workers=1)
    policies = [_policy(i) for i in range(40)]
    job = _job(20_000)
    t0 = time.perf_counter()
    evaluate_all(policies[:1], job)
    one = time.perf_counter() - t0  # one policy's evaluation, on this machine now
    limit = max(0.2, one * 2)
    assert one * len(policies) > 5 * limit, "the work is not much longer than the deadline"
    started = time.monotonic()
    with pytest.raises(ApiError) as info:
        await guard.run(True, policies, job, Call("admin-token", remaining=limit))
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "took longer than" in info.value.message
    assert time.monotonic() - started < limit + 1.0
    # The thread stopped soon after: the slot (one here) takes the next call at once.
    small = [_policy(99, 'tag == "1.0"')]
    got = await asyncio.wait_for(
        guard.run(True, small, _job(5), Call("admin-token", remaining=30)), one * 3 + 2)
    assert [r.matched for r in got] == [True]
    guard.close()


async def test_another_callers_large_evaluation_is_killed_at_the_deadline() -> None:
    guard = EvaluationGuard(TOKENS, workers=1, deadline=1.0)
    started = time.monotonic()
    with pytest.raises(ApiError) as info:
        await guard.run(False, [_policy(i) for i in range(4)], _job(150_000), Call("read-token"))
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "took longer than 1 s" in info.value.message
    assert time.monotonic() - started < 4.0
    # The same worker path answers work that fits, compiled there from the stored records.
    [r] = await guard.run(False, [_policy(7, 'component == "package-3"')], _job(10),
                          Call("read-token"))
    assert r.matched and r.policy_name == "heavy-07" and r.tag == "1.0"
    guard.close()
