"""`python -m policy_service` as a subprocess, driven with grpcurl through reflection."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.policy.policy_servicer_support import (  # noqa: F401  (fixture)
    REPO_ROOT,
    SEED_RULE,
    PolicyProcess,
    TransferDouble,
    start_policy_process,
    transfer_double,
)

GRPCURL = str(REPO_ROOT / ".venv" / "bin" / "grpcurl")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PolicyProcess]:
    # Started without --transfer-address: the push check is skipped (standalone mode).
    p = start_policy_process(tmp_path_factory.mktemp("policy-data"))
    yield p
    p.stop()


def grpcurl(
    server: PolicyProcess, *args: str, data: object = None
) -> subprocess.CompletedProcess[str]:
    """Run grpcurl against the server (it prints JSON with the proto field names)."""
    cmd = [GRPCURL, "-plaintext"]
    if data is not None:
        cmd += ["-d", json.dumps(data)]
    cmd += [server.address, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


def test_list_shows_the_services(server: PolicyProcess) -> None:
    out = grpcurl(server, "list")
    assert out.returncode == 0, out.stderr
    services = set(out.stdout.split())
    assert {"mirror.v1.PolicyService", "grpc.health.v1.Health"} <= services


def test_describe_shows_every_rpc(server: PolicyProcess) -> None:
    out = grpcurl(server, "describe", "mirror.v1.PolicyService")
    assert out.returncode == 0, out.stderr
    for rpc in ("CreatePolicy", "GetPolicy", "ListPolicies", "UpdatePolicy", "DeletePolicy",
                "ValidateRule", "Evaluate", "EvaluateRule", "GetFactRequirements"):
        assert f"rpc {rpc} (" in out.stdout


def test_health_reports_serving(server: PolicyProcess) -> None:
    out = grpcurl(server, "grpc.health.v1.Health/Check",
                  data={"service": "mirror.v1.PolicyService"})
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["status"] == "SERVING"


def test_create_then_evaluate_the_seed_policy(server: PolicyProcess) -> None:
    created = grpcurl(server, "mirror.v1.PolicyService/CreatePolicy", data={
        "policy": {
            "name": "seed", "source": {"endpoint": "dev", "repository": "dev/website"},
            "rule": SEED_RULE,
            "target": {"endpoint": "qa", "repository": "qa/website"},
            "tagTemplate": "%Y%m%d-%H%M", "enabled": True,
        }
    })
    assert created.returncode == 0, created.stderr
    policy = json.loads(created.stdout)
    assert policy["required_facts"] == ["FACT_KIND_REFERENCE", "FACT_KIND_VULNERABILITIES"]

    fresh = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    evaluated = grpcurl(server, "mirror.v1.PolicyService/Evaluate", data={
        "endpoint": "dev",
        "facts": {"repository": "dev/website", "tag": "1.4-stable",
                  "vulnerabilities": {"critical": "3"}, "vulnerabilityDataTime": fresh},
        "evaluationTime": "2026-11-26T15:30:00Z",
    })
    assert evaluated.returncode == 0, evaluated.stderr
    [result] = json.loads(evaluated.stdout)["results"]
    assert result["policy_id"] == policy["id"]
    assert result["matched"] is True
    assert result["tag"] == "20261126-1530"
    assert result["target"] == {"endpoint": "qa", "repository": "qa/website"}


def test_bad_rule_is_reported_with_its_position(server: PolicyProcess) -> None:
    out = grpcurl(server, "mirror.v1.PolicyService/CreatePolicy", data={
        "policy": {
            "name": "typo", "source": {"endpoint": "dev", "repository": "dev/website"},
            "rule": "critcal_vulns <= 3", "target": {"endpoint": "qa", "repository": "qa/x"},
        }
    })
    assert out.returncode != 0
    assert "InvalidArgument" in out.stderr
    assert "line 1, column 1: unknown field 'critcal_vulns'" in out.stderr
    assert "did you mean 'critical_vulns'?" in out.stderr


def test_old_source_repository_shape_is_refused_naming_the_new_field(
    server: PolicyProcess,
) -> None:
    out = grpcurl(server, "mirror.v1.PolicyService/CreatePolicy", data={
        "policy": {
            "name": "old", "sourceRepository": "dev/website", "rule": "true",
            "target": {"endpoint": "qa", "repository": "qa/x"},
        }
    })
    assert out.returncode != 0
    assert "InvalidArgument" in out.stderr
    assert '"field":"policy.source_repository"' in out.stderr
    assert "replaced by source {endpoint, repository}" in out.stderr


async def test_with_transfer_address_targets_are_checked(
    tmp_path: Path, transfer_double: tuple[TransferDouble, int]  # noqa: F811
) -> None:
    double, port = transfer_double
    p = start_policy_process(tmp_path, "--transfer-address", f"127.0.0.1:{port}")
    try:
        body = {"policy": {
            "name": "to-prod", "source": {"endpoint": "dev", "repository": "dev/website"},
            "rule": "true",
            "target": {"endpoint": "prod", "repository": "prod/website"},
        }}
        # grpcurl blocks; run it in a thread so the double keeps answering on this loop.
        out = await asyncio.to_thread(
            grpcurl, p, "mirror.v1.PolicyService/CreatePolicy", data=body
        )
        assert out.returncode != 0
        assert "FailedPrecondition" in out.stderr and "'prod' does not exist" in out.stderr
        body["policy"]["target"]["endpoint"] = "qa"  # type: ignore[index]
        ok = await asyncio.to_thread(grpcurl, p, "mirror.v1.PolicyService/CreatePolicy", data=body)
        assert ok.returncode == 0, ok.stderr
        assert [(c.endpoint, c.check_push) for c in double.calls] == [("prod", True), ("qa", True)]
    finally:
        p.stop()
