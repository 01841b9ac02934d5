"""GetPolicy by name (issue 15: get-by-name in the SDK), on a real policy server."""

from __future__ import annotations

import grpc
import pytest
from grpc import aio
from mirror.v1 import policy_pb2

from tests.policy.policy_servicer_support import (  # noqa: F401  (fixtures)
    PolicyEnv,
    env,
    policy,
    transfer_double,
)


async def test_a_policy_is_found_by_its_name(env: PolicyEnv) -> None:  # noqa: F811
    made = await env.stub.CreatePolicy(policy_pb2.CreatePolicyRequest(policy=policy(name="p1")))
    await env.stub.CreatePolicy(policy_pb2.CreatePolicyRequest(policy=policy(name="p2")))
    got = await env.stub.GetPolicy(policy_pb2.GetPolicyRequest(name="p1"))
    assert got.id == made.id and got.name == "p1"
    with pytest.raises(aio.AioRpcError) as missing:
        await env.stub.GetPolicy(policy_pb2.GetPolicyRequest(name="nope"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert "nope" in (missing.value.details() or "")
