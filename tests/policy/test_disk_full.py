"""A full data volume under the policy service (issue 10, finding 6): a write that cannot be
stored is RESOURCE_EXHAUSTED "no space left on the data volume", never `INTERNAL: internal
error` with the cause only in the server log (servicekit's error interceptor, for every
service). The volume is a real 8 MiB tmpfs; the service runs as `python -m policy_service`."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
from mirror.v1 import common_pb2, policy_pb2, policy_pb2_grpc

from registry_testkit.ports import free_port
from tests.support.services import ROOT, wait_serving
from tests.support.volumes import fill


def _policy(i: int) -> policy_pb2.Policy:
    return policy_pb2.Policy(
        name=f"p-{i}", rule='tag endswith "stable"', description="x" * 2000,
        source=policy_pb2.PolicySource(endpoint="dev", repository=f"team/app-{i}"),
        target=common_pb2.Target(endpoint="qa", repository=f"qa/app-{i}"),
    )


def test_a_full_volume_is_said_as_such(
    tiny_volume: Callable[[str], Path], tmp_path: Path
) -> None:
    data = tiny_volume("8m")
    address = f"127.0.0.1:{free_port()}"
    log = tmp_path / "policy.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "policy_service", "--grpc-listen", address,
             "--data", str(data)], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        wait_serving(address, proc, log)
        with grpc.insecure_channel(address) as ch:
            stub = policy_pb2_grpc.PolicyServiceStub(ch)
            stub.CreatePolicy(policy_pb2.CreatePolicyRequest(policy=_policy(0)), timeout=30)
            fill(data)
            refused = None
            for i in range(1, 200):  # SQLite may still fit a few rows in its free pages
                try:
                    stub.CreatePolicy(policy_pb2.CreatePolicyRequest(policy=_policy(i)),
                                      timeout=30)
                except grpc.RpcError as err:
                    refused = err
                    break
            assert refused is not None, "the full volume never refused a write"
            assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused.details()
            assert refused.details().startswith("no space left on the data volume"), (
                refused.details())
            assert "CreatePolicy" in refused.details()
            # What was stored before is still served.
            listed = stub.ListPolicies(policy_pb2.ListPoliciesRequest(), timeout=30)
            assert "p-0" in [p.name for p in listed.policies]
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    # The server log says it too, for the operator.
    assert "no space left on the data volume" in log.read_text()
