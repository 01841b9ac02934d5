"""Logs with fields, per-RPC and per-policy metrics, the example alert rules, the health probe
(issue 15), on a real `mirror-stack` mirroring a real push."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from mirror.v1 import gateway_pb2, policy_pb2

from registry_testkit.images import ImageBuilder, push
from stack.process import StackProcess
from tests.e2e.conftest import WEBHOOK_SECRET, Clients, dev_and_qa
from tests.support.registry import RegistryFactory

pytestmark = pytest.mark.registry

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus"
Run = gateway_pb2.Run


@pytest.fixture
def json_stack(tmp_path: Path) -> Iterator[StackProcess]:
    proc = StackProcess(
        tmp_path / "data", webhook_secret=WEBHOOK_SECRET,
        extra_args=["--reconcile-interval", "0", "--log-format", "json"],
    )
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def metrics_text(stack: StackProcess) -> str:
    with urllib.request.urlopen(f"{stack.http_base}/metrics", timeout=10) as resp:
        return resp.read().decode()


def log_records(stack: StackProcess) -> list[dict[str, object]]:
    out = []
    for line in stack.log_path.read_text().splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def test_rpc_and_run_fields_metrics_and_alert_metric_names(
    json_stack: StackProcess, registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    c = Clients(json_stack.grpc_address)
    try:
        dev, _qa = dev_and_qa(c, registry_factory, json_stack)
        pol = c.add_policy("to-qa", "dev/website", 'tag endswith "stable"', "qa", "qa/website")
        c.policy.ListPolicies(policy_pb2.ListPoliciesRequest(), timeout=10)
        push(ImageBuilder(tmp_path / "img").image("1.0-stable"), dev, "dev/website")
        (run,) = c.wait_runs_final(pol.id, 1)
        assert run.state == Run.STATE_SUCCEEDED
    finally:
        c.close()

    records = log_records(json_stack)
    rpc = [r for r in records if r.get("rpc_method") == "/mirror.v1.PolicyService/ListPolicies"]
    assert rpc and rpc[0]["code"] == "OK" and isinstance(rpc[0]["duration_ms"], float)
    assert rpc[0]["msg"].startswith("rpc /mirror.v1.PolicyService/ListPolicies OK")
    runs = [r for r in records if r.get("run") == run.id]
    assert runs and runs[0]["policy"] == "to-qa" and runs[0]["repository"] == "dev/website"
    assert runs[0]["source"] == "dev/dev/website:1.0-stable"
    jobs = [r for r in records if r.get("transfer") == run.transfer_id]
    assert jobs, "the transfer worker's lines carry the transfer id"

    text = metrics_text(json_stack)
    assert re.search(
        r'mirror_rpc_requests_total\{code="OK",method="/mirror.v1.PolicyService/ListPolicies"\} '
        r"[1-9]", text
    )
    assert 'mirror_rpc_duration_seconds_bucket{le="0.005",method="/mirror.v1.PolicyService/' in text
    assert re.search(r'mirror_policy_runs_total\{policy="to-qa",state="succeeded"\} 1\.0', text)
    assert re.search(r'mirror_policy_last_success_timestamp_seconds\{policy="to-qa"\} 1\.\d+e\+09',
                     text)
    # The exposition passes Prometheus' own lint.
    promtool = shutil.which("promtool")
    assert promtool
    lint = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=60)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    # Every metric an example alert reads is one the stack exports.
    exported = set(re.findall(r"^# TYPE (\w+) ", text, re.M))
    exported |= {f"{n}_total" for n in exported} | {f"{n}_bucket" for n in exported}
    rules = yaml.safe_load((RULES / "alerts.yml").read_text())
    used = {
        name
        for group in rules["groups"]
        for rule in group["rules"]
        for name in re.findall(r"\b(mirror_\w+)", rule["expr"])
    }
    assert used and used <= exported, used - exported


def test_example_alert_rules_pass_promtool() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool comes with Debian's prometheus package (apt-packages.txt)"
    check = subprocess.run([promtool, "check", "rules", "alerts.yml"], cwd=RULES,
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run([promtool, "test", "rules", "alerts_test.yml"], cwd=RULES,
                          capture_output=True, text=True, timeout=60)
    assert unit.returncode == 0, unit.stdout + unit.stderr


def test_healthcheck_probe(json_stack: StackProcess) -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "servicekit.healthcheck", json_stack.grpc_address],
        capture_output=True, text=True, timeout=30,
    )
    assert ok.returncode == 0 and ok.stdout.strip() == "SERVING", ok.stderr
    gone = subprocess.run(
        [sys.executable, "-m", "servicekit.healthcheck", "127.0.0.1:1", "--timeout", "1"],
        capture_output=True, text=True, timeout=30,
    )
    assert gone.returncode == 1 and "UNAVAILABLE" in gone.stderr
