"""Policies survive a killed policy-service process: the index is rebuilt from SQLite."""

from __future__ import annotations

import signal
from pathlib import Path

import grpc
from google.protobuf import field_mask_pb2, timestamp_pb2
from mirror.v1 import common_pb2, policy_pb2, policy_pb2_grpc

from tests.policy.policy_servicer_support import policy, start_policy_process


def _stub(address: str) -> tuple[grpc.Channel, policy_pb2_grpc.PolicyServiceStub]:
    channel = grpc.insecure_channel(address)
    return channel, policy_pb2_grpc.PolicyServiceStub(channel)


def _evaluate(stub: policy_pb2_grpc.PolicyServiceStub) -> list[tuple[str, bool, str]]:
    when = timestamp_pb2.Timestamp(seconds=1_795_707_000)  # 2026-11-26T15:30:00Z
    fresh = timestamp_pb2.Timestamp()
    fresh.GetCurrentTime()
    resp = stub.Evaluate(
        policy_pb2.EvaluateRequest(
            endpoint="dev",
            facts=common_pb2.ImageFacts(
                repository="dev/website", tag="1.4-stable", vulnerability_data_time=fresh
            ),
            evaluation_time=when,
        ),
        timeout=10,
    )
    return [(r.policy_name, r.matched, r.tag) for r in resp.results]


def test_policies_survive_a_killed_process(tmp_path: Path) -> None:
    first = start_policy_process(tmp_path)
    try:
        channel, stub = _stub(first.address)
        seed = stub.CreatePolicy(
            policy_pb2.CreatePolicyRequest(policy=policy(
                tag_template="%Y%m%d-%H%M", overwrite=policy_pb2.OVERWRITE_NEVER,
                allow_incomplete_facts=True,
            )), timeout=10
        )
        glob = stub.CreatePolicy(
            policy_pb2.CreatePolicyRequest(
                policy=policy(name="all-dev", source="dev/**", rule="true")
            ),
            timeout=10,
        )
        stub.CreatePolicy(
            policy_pb2.CreatePolicyRequest(policy=policy(name="off", enabled=False)), timeout=10
        )
        glob = stub.UpdatePolicy(
            policy_pb2.UpdatePolicyRequest(
                policy=policy_pb2.Policy(id=glob.id, description="edited"),
                update_mask=field_mask_pb2.FieldMask(paths=["description"]),
            ),
            timeout=10,
        )
        before = _evaluate(stub)
        listed_before = stub.ListPolicies(policy_pb2.ListPoliciesRequest(), timeout=10)
        channel.close()
    finally:
        first.stop(signal.SIGKILL)  # no graceful shutdown

    assert before == [("all-dev", True, "1.4-stable"), ("promote-website", True, "20261126-1530")]
    second = start_policy_process(tmp_path)
    try:
        channel, stub = _stub(second.address)
        assert stub.GetPolicy(policy_pb2.GetPolicyRequest(id=seed.id), timeout=10) == seed
        assert seed.overwrite == policy_pb2.OVERWRITE_NEVER and seed.allow_incomplete_facts
        assert (seed.source.endpoint, glob.target.repository) == ("dev", "qa/{repository}")
        assert stub.GetPolicy(policy_pb2.GetPolicyRequest(id=glob.id), timeout=10) == glob
        assert stub.ListPolicies(policy_pb2.ListPoliciesRequest(), timeout=10) == listed_before
        assert len(listed_before.policies) == 3
        assert _evaluate(stub) == before
        channel.close()
    finally:
        second.stop()
