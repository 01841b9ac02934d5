"""StreamConnectionTest (DTR's Connect, step by step) and ListRepositories, on real registries."""

from __future__ import annotations

import time

import grpc
import pytest
from grpc import aio
from mirror.v1 import transfer_pb2

from registry_testkit.faultproxy import FaultProxy
from registry_testkit.images import ImageBuilder, push
from tests.transfer.transfer_support import Served, endpoint_msg

pytestmark = pytest.mark.registry

Check = transfer_pb2.ConnectionCheck


async def add(served: Served, name: str, url: str, **kw: object) -> None:
    await served.stub.CreateEndpoint(
        transfer_pb2.CreateEndpointRequest(endpoint=endpoint_msg(name, url, **kw))
    )


async def test_steps_arrive_one_by_one_as_they_complete(
    endpoints_only: Served, registry, fault_proxy
) -> None:
    proxy: FaultProxy = fault_proxy(registry.url)
    # The pull check waits: the first steps must reach the caller before it ends.
    proxy.delay(r"^/v2/team/", 1.5)
    await add(endpoints_only, "slow", proxy.url)
    seen: list[tuple[int, int, float]] = []
    started = time.monotonic()
    async for check in endpoints_only.stub.StreamConnectionTest(
        transfer_pb2.TestConnectionRequest(endpoint="slow", repository="team/app", check_push=True)
    ):
        seen.append((check.step, check.result, time.monotonic() - started))
    steps = [s for s, _, _ in seen]
    assert steps[0] == Check.STEP_REACHABLE
    assert set(steps) == {
        Check.STEP_REACHABLE, Check.STEP_TLS_VERIFIED, Check.STEP_AUTHENTICATED,
        Check.STEP_PULL_ALLOWED, Check.STEP_PUSH_ALLOWED,
    }
    assert len(steps) == len(set(steps)), "each step once"
    reachable_at = seen[0][2]
    assert reachable_at < seen[-1][2] - 1.0, seen
    unary = await endpoints_only.stub.TestConnection(
        transfer_pb2.TestConnectionRequest(endpoint="slow", repository="team/app", check_push=True)
    )
    assert sorted((c.step, c.result) for c in unary.checks) == sorted((s, r) for s, r, _ in seen)


async def test_a_failed_step_then_the_skipped_ones(endpoints_only: Served) -> None:
    await add(endpoints_only, "nowhere", "http://127.0.0.1:1")
    got = [
        (c.step, c.result)
        async for c in endpoints_only.stub.StreamConnectionTest(
            transfer_pb2.TestConnectionRequest(endpoint="nowhere", repository="team/app")
        )
    ]
    assert got[0] == (Check.STEP_REACHABLE, Check.RESULT_FAILED)
    assert [r for _, r in got[1:]] == [Check.RESULT_SKIPPED] * (len(got) - 1) and len(got) == 4


async def test_list_repositories_pages_in_name_order(
    endpoints_only: Served, registry, tmp_path
) -> None:
    builder = ImageBuilder(tmp_path / "img")
    for repo in ("team/b", "team/a", "other/c"):
        push(builder.image("1.0"), registry, repo)
    await add(endpoints_only, "dev", registry.url)
    first = await endpoints_only.stub.ListRepositories(
        transfer_pb2.ListRepositoriesRequest(endpoint="dev", page_size=1, prefix="team/")
    )
    assert list(first.repositories) == ["team/a"] and first.next_page_token
    second = await endpoints_only.stub.ListRepositories(
        transfer_pb2.ListRepositoriesRequest(
            endpoint="dev", page_size=1, prefix="team/", page_token=first.next_page_token
        )
    )
    assert list(second.repositories) == ["team/b"]
    with pytest.raises(aio.AioRpcError) as missing:
        await endpoints_only.stub.ListRepositories(
            transfer_pb2.ListRepositoriesRequest(endpoint="nope")
        )
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
