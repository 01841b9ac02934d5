"""An embedded stack moved into PostgreSQL keeps its policies, endpoints (secrets still
working), runs and jobs, and goes on mirroring: `python -m stack.copy_database`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from mirror.v1 import gateway_pb2, policy_pb2, transfer_pb2

from registry_testkit.images import ImageBuilder, push
from stack.process import StackProcess
from tests.e2e.conftest import QA_PASSWORD, QA_USER, WEBHOOK_SECRET, Clients, notify_config
from tests.e2e.helpers import skopeo_digest, tags_of
from tests.support.registry import RegistryFactory

pytestmark = pytest.mark.registry

ROOT = Path(__file__).resolve().parents[2]
Run = gateway_pb2.Run


def _copy(data: Path, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stack.copy_database", "--data", str(data), "--database", url],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def test_embedded_state_moves_into_postgresql(
    registry_factory: RegistryFactory, pg_url: str, tmp_path: Path
) -> None:
    data = tmp_path / "stack-data"
    stack = StackProcess(
        data, webhook_secret=WEBHOOK_SECRET, extra_args=["--reconcile-interval", "0"]
    )
    stack.start()
    dev = registry_factory(notifications=[notify_config(stack)])
    qa = registry_factory(htpasswd_users={QA_USER: QA_PASSWORD})
    images = ImageBuilder(tmp_path / "img")
    c = Clients(stack.grpc_address)
    try:
        c.add_endpoint("dev", dev)
        c.add_endpoint("qa", qa, QA_USER, QA_PASSWORD)
        pol = c.add_policy("web", "dev/web", 'tag endswith "stable"', "qa", "qa/web")
        push(images.image("1.0-stable"), dev, "dev/web")
        before = c.wait_runs_final(pol.id, 1)
        assert before[0].state == Run.STATE_SUCCEEDED, before[0].message
        jobs_before = {t.id for t in c.transfers()}
    finally:
        c.close()
    # While the stack runs, its folder is locked: nothing is copied from a moving target.
    busy = _copy(data, pg_url)
    assert busy.returncode == 1 and "in use" in busy.stderr.lower(), busy.stderr
    stack.stop()

    done = _copy(data, pg_url)
    assert done.returncode == 0, done.stderr
    assert "policy:" in done.stdout and "transfer:" in done.stdout
    # A second copy into the same database is refused: nothing is doubled.
    again = _copy(data, pg_url)
    assert again.returncode == 1 and "must be empty" in again.stderr

    stack.extra_args += ["--database", pg_url]
    stack.start()
    c = Clients(stack.grpc_address)
    try:
        got = c.policy.GetPolicy(policy_pb2.GetPolicyRequest(id=pol.id), timeout=30)
        assert got.name == "web" and got.source.repository == "dev/web"
        assert [r.id for r in c.runs(pol.id)] == [before[0].id]
        assert {t.id for t in c.transfers()} == jobs_before
        # The QA password, encrypted under the same key, still opens the QA registry.
        check = c.transfer.TestConnection(
            transfer_pb2.TestConnectionRequest(endpoint="qa", repository="qa/web"), timeout=60
        )
        assert check.ok, check
        push(images.image("2.0-stable"), dev, "dev/web")
        runs = c.wait_runs_final(pol.id, 2)
        assert all(r.state == Run.STATE_SUCCEEDED for r in runs), [r.message for r in runs]
        assert sorted(tags_of(qa, "qa/web", QA_USER, QA_PASSWORD)) == ["1.0-stable", "2.0-stable"]
        assert skopeo_digest(qa, "qa/web", "2.0-stable", QA_USER, QA_PASSWORD) == skopeo_digest(
            dev, "dev/web", "2.0-stable"
        )
    finally:
        c.close()
        stack.stop()
