"""The push check against the real TransferService and a real token-auth docker-registry."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc import aio
from mirror.v1 import common_pb2, policy_pb2, policy_pb2_grpc, transfer_pb2, transfer_pb2_grpc

from policy_service.push_check import GrpcPushChecker
from policy_service.servicer import PolicyServicer
from policy_service.store import PolicyStore
from registry_testkit.registry import RegistryProcess
from servicekit.server import start_server
from tests.policy.policy_servicer_support import policy, precondition_violations
from transfer_service.servicer import TransferServicer

pytestmark = pytest.mark.registry


@pytest.fixture
async def stubs(
    tmp_path: Path, token_registry: RegistryProcess
) -> AsyncIterator[policy_pb2_grpc.PolicyServiceStub]:
    """Policy and transfer servicers on one server (as the embedded default mounts them),
    with endpoints `rw` (push allowed) and `ro` (pull only) on the token registry."""
    transfer = TransferServicer.open(tmp_path / "transfer")
    store = PolicyStore.open(tmp_path / "policy")
    # The checker's channel is opened before the port is known: connect lazily to it.
    holder: dict[str, aio.Channel] = {}

    class LateChecker:
        async def check(self, endpoint: str, repository: str) -> None:
            await GrpcPushChecker(holder["channel"]).check(endpoint, repository)

    running = await start_server([PolicyServicer(store, LateChecker()), transfer], "127.0.0.1:0")
    channel = aio.insecure_channel(f"127.0.0.1:{running.port}")
    holder["channel"] = channel
    tstub = transfer_pb2_grpc.TransferServiceStub(channel)
    for name, user in (("rw", "writer"), ("ro", "reader")):
        endpoint = transfer_pb2.Endpoint(
            name=name, url=token_registry.url, username=user,
            secret=token_registry.password_of(user),
        )
        await tstub.CreateEndpoint(transfer_pb2.CreateEndpointRequest(endpoint=endpoint))
    yield policy_pb2_grpc.PolicyServiceStub(channel)
    await channel.close()
    await running.stop(0)
    await transfer.stop()
    store.close()


async def test_policy_on_a_pushable_target_is_created(
    stubs: policy_pb2_grpc.PolicyServiceStub,
) -> None:
    created = await stubs.CreatePolicy(policy_pb2.CreatePolicyRequest(
        policy=policy(target=common_pb2.Target(endpoint="rw", repository="qa/website"))
    ))
    assert created.id and created.target.endpoint == "rw"


async def test_read_only_account_is_refused(stubs: policy_pb2_grpc.PolicyServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as exc:
        await stubs.CreatePolicy(policy_pb2.CreatePolicyRequest(
            policy=policy(target=common_pb2.Target(endpoint="ro", repository="qa/website"))
        ))
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    [(step, subject, message)] = precondition_violations(exc.value)
    assert step == "STEP_PUSH_ALLOWED"
    assert subject == "endpoints/ro/repositories/qa/website"
    assert "can read but not push" in message
    listed = await stubs.ListPolicies(policy_pb2.ListPoliciesRequest())
    assert list(listed.policies) == []


async def test_unknown_endpoint_is_refused(stubs: policy_pb2_grpc.PolicyServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as exc:
        await stubs.CreatePolicy(policy_pb2.CreatePolicyRequest(
            policy=policy(target=common_pb2.Target(endpoint="prod", repository="qa/website"))
        ))
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert [v[0] for v in precondition_violations(exc.value)] == ["ENDPOINT_EXISTS"]
