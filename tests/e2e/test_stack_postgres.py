"""`mirror-stack --database postgresql://...`: the embedded services keep their state in their
own schemas of that database (policy, transfer, gateway, scanner), nothing in SQLite files
under --data; a restart on the same database finds it all; the URL's password is not shown."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from mirror.v1 import gateway_pb2, policy_pb2

from registry_testkit.images import ImageBuilder, push
from registry_testkit.postgres import available as postgres_available
from stack.process import StackProcess
from tests.e2e.conftest import WEBHOOK_SECRET, Clients, dev_and_qa
from tests.e2e.helpers import skopeo_digest
from tests.support.registry import RegistryFactory

pytestmark = [
    pytest.mark.registry,
    pytest.mark.skipif(not postgres_available(), reason="needs PostgreSQL"),
]

ROOT = Path(__file__).resolve().parents[2]
Run = gateway_pb2.Run


def _count(url: str, table: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


def test_stack_keeps_every_service_in_its_own_postgresql_schema(
    pg_url: str, registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    data = tmp_path / "stack-data"
    # From the environment, as the deployments give it (a password stays off the argv).
    stack = StackProcess(data, webhook_secret=WEBHOOK_SECRET,
                         extra_args=["--reconcile-interval", "0"],
                         env={"MIRROR_DATABASE": pg_url})
    stack.start()
    try:
        assert "  database  " + pg_url in stack.output
        clients = Clients(stack.grpc_address)
        try:
            dev, qa = dev_and_qa(clients, registry_factory, stack)
            pol = clients.add_policy("p", "dev/app", 'tag endswith "stable"', "qa", "qa/app")
            clients.wait_baseline(pol.id)
            img = ImageBuilder(tmp_path / "img").image("1.0-stable")
            push(img, dev, "dev/app")
            (run,) = clients.wait_runs_final(pol.id, 1)
            assert run.state == Run.STATE_SUCCEEDED, run.message
            assert skopeo_digest(qa, "qa/app", "1.0-stable") == img.digest
        finally:
            clients.close()
    finally:
        stack.stop()

    with psycopg.connect(pg_url) as conn:
        schemas = {r[0] for r in conn.execute(
            "SELECT schema_name FROM information_schema.schemata")}
    assert {"policy", "transfer", "gateway", "scanner"} <= schemas
    assert _count(pg_url, "transfer.endpoints") == 2
    assert _count(pg_url, "transfer.jobs") == 1
    assert _count(pg_url, "gateway.runs") == 1
    # Nothing went to SQLite: --data holds the lock and the spool only.
    assert not list(data.rglob("*.db")), list(data.rglob("*.db"))

    # Restarted on the same database (and a new data folder): the policy and its run are there.
    again = StackProcess(tmp_path / "other-data", webhook_secret=WEBHOOK_SECRET,
                         extra_args=["--reconcile-interval", "0", "--database", pg_url])
    again.start()
    try:
        clients = Clients(again.grpc_address)
        try:
            names = [p.name for p in clients.policy.ListPolicies(
                policy_pb2.ListPoliciesRequest(), timeout=10).policies]
            assert names == ["p"]
            assert [r.state for r in clients.runs(pol.id)] == [Run.STATE_SUCCEEDED]
        finally:
            clients.close()
    finally:
        again.stop()


def test_stack_hides_the_database_password_and_refuses_a_non_postgres_url(
    tmp_path: Path,
) -> None:
    from stack.__main__ import redacted_url

    assert redacted_url("postgresql://mirror:s3cret@db:5432/mirror") == \
        "postgresql://mirror:***@db:5432/mirror"
    res = subprocess.run(
        [sys.executable, "-m", "stack", "--data", str(tmp_path / "d"),
         "--database", str(tmp_path / "state.db")],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert res.returncode == 2
    assert "must be a postgresql:// URL" in res.stderr
