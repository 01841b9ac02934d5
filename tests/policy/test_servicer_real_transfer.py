"""The push check against the real TransferService and a real token-auth docker-registry."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc import aio
from mirror.v1 import common_pb2, policy_pb2, policy_pb2_grpc, transfer_pb2, transfer_pb2_grpc

from policy_service.push_check import GrpcPushChecker
from policy_service.servicer import PolicyServicer
from policy_service.store import PolicyStore
from registry_testkit.registry import RegistryProcess
from registry_testkit.token_server import TokenServer
from servicekit.server import start_server
from tests.policy.policy_servicer_support import details, policy, precondition_violations
from tests.support.registry import RegistryFactory
from transfer_service.servicer import TransferServicer

pytestmark = pytest.mark.registry


FROM_RO = policy_pb2.PolicySource(endpoint="ro", repository="dev/website")


@pytest.fixture
async def stubs(
    tmp_path: Path, token_registry: RegistryProcess, registry_factory: RegistryFactory,
    token_server: TokenServer,
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

        async def require_endpoint(self, endpoint: str) -> None:
            await GrpcPushChecker(holder["channel"]).require_endpoint(endpoint)

        async def endpoint_names(self) -> list[str]:
            return await GrpcPushChecker(holder["channel"]).endpoint_names()

    running = await start_server([PolicyServicer(store, LateChecker()), transfer], "127.0.0.1:0")
    channel = aio.insecure_channel(f"127.0.0.1:{running.port}")
    holder["channel"] = channel
    tstub = transfer_pb2_grpc.TransferServiceStub(channel)
    # The transfer service refuses a second endpoint for the same registry: the reader's
    # endpoint is a second registry behind the same token server.
    second = registry_factory(token_server=token_server)
    for name, user, url in (("rw", "writer", token_registry.url), ("ro", "reader", second.url)):
        endpoint = transfer_pb2.Endpoint(
            name=name, url=url, username=user,
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
        policy=policy(
            source=FROM_RO, target=common_pb2.Target(endpoint="rw", repository="qa/website")
        )
    ))
    assert created.id and created.target.endpoint == "rw"


async def test_read_only_account_is_refused(stubs: policy_pb2_grpc.PolicyServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as exc:
        await stubs.CreatePolicy(policy_pb2.CreatePolicyRequest(
            policy=policy(
                source=FROM_RO, target=common_pb2.Target(endpoint="ro", repository="qa/website")
            )
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
            policy=policy(
                source=FROM_RO, target=common_pb2.Target(endpoint="prod", repository="qa/website")
            )
        ))
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert [v[0] for v in precondition_violations(exc.value)] == ["ENDPOINT_EXISTS"]


async def test_unknown_source_endpoint_is_refused(
    stubs: policy_pb2_grpc.PolicyServiceStub,
) -> None:
    with pytest.raises(grpc.RpcError) as exc:
        await stubs.CreatePolicy(policy_pb2.CreatePolicyRequest(
            policy=policy(
                source=policy_pb2.PolicySource(endpoint="dev", repository="dev/website"),
                target=common_pb2.Target(endpoint="rw", repository="qa/website"),
            ),
            validate_only=True,
        ))
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert [i.reason for i in details(exc.value, error_details_pb2.ErrorInfo)] == [  # type: ignore[attr-defined]
        "ENDPOINT_NOT_FOUND"
    ]
    assert precondition_violations(exc.value) == [
        ("ENDPOINT_EXISTS", "endpoints/dev", "no such endpoint")
    ]
    assert "source endpoint 'dev' does not exist" in (exc.value.details() or "")
