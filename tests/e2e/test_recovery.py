"""Crash safety: an acknowledged event survives SIGKILL; a lost event is found by Reconcile
(called, or the periodic sweep)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from mirror.v1 import gateway_pb2

from registry_testkit.images import ImageBuilder, push
from stack.process import StackProcess
from tests.e2e.conftest import WEBHOOK_SECRET, Clients, notify_config, wait_for
from tests.e2e.helpers import healthz, skopeo_digest, tags_of
from tests.support.registry import RegistryFactory

pytestmark = pytest.mark.registry

Run = gateway_pb2.Run


def test_acknowledged_event_survives_sigkill(
    registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    stack = StackProcess(
        tmp_path / "data", webhook_secret=WEBHOOK_SECRET, extra_args=["--reconcile-interval", "0"]
    )
    # The worker holds the inbox: events are recorded and acknowledged, never acted on.
    stack.start(env={"MIRROR_GATEWAY_HOLD_INBOX": "1"})
    try:
        dev = registry_factory(notifications=[notify_config(stack)])
        qa = registry_factory()
        c = Clients(stack.grpc_address)
        c.add_endpoint("dev", dev)
        c.add_endpoint("qa", qa)
        pol = c.add_policy("p", "dev/website", 'tag endswith "stable"', "qa", "qa/website")
        img = ImageBuilder(tmp_path / "img").image("4.0-stable")
        push(img, dev, "dev/website")
        wait_for(lambda: healthz(stack.http_base)["inbox_depth"] == 1, 20, "the event in the inbox")
        assert c.runs(pol.id) == [] and tags_of(qa, "qa/website") == []
        c.close()
        stack.kill()

        stack.start()  # same data, same ports, worker on
        c = Clients(stack.grpc_address)
        runs = c.wait_runs_final(pol.id, 1)
        assert runs[0].state == Run.STATE_SUCCEEDED, runs[0].message
        assert tags_of(qa, "qa/website") == ["4.0-stable"]
        assert skopeo_digest(qa, "qa/website", "4.0-stable") == img.digest
        assert healthz(stack.http_base)["inbox_depth"] == 0
        c.close()
    finally:
        stack.stop()


def test_reconcile_finds_a_push_whose_event_was_lost(
    stack: StackProcess, clients: Clients, registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    dev = registry_factory()  # sends no events at all: every push is "lost"
    qa = registry_factory()
    clients.add_endpoint("dev", dev)
    clients.add_endpoint("qa", qa)
    pol = clients.add_policy("p", "dev/website", 'tag endswith "stable"', "qa", "qa/website")
    # Save acts from now on: once the gateway has noted what dev held, later pushes are its.
    clients.wait_baseline(pol.id)
    builder = ImageBuilder(tmp_path / "img")
    stable = builder.image("5.0-stable")
    push(stable, dev, "dev/website")
    push(builder.image("5.0-dev"), dev, "dev/website")
    assert clients.runs(pol.id) == []

    resp = clients.gateway.Reconcile(gateway_pb2.ReconcileRequest(), timeout=60)
    assert resp.tags_checked == 2 and resp.runs_started == 1
    clients.wait_runs_final(pol.id, 2)
    wait_for(lambda: tags_of(qa, "qa/website") == ["5.0-stable"], 30, "the mirrored tag")
    assert skopeo_digest(qa, "qa/website", "5.0-stable") == stable.digest
    runs = clients.runs(pol.id)
    assert {r.trigger for r in runs} == {Run.TRIGGER_RECONCILE}

    # Covered now: a second pass starts nothing.
    again = clients.gateway.Reconcile(gateway_pb2.ReconcileRequest(policy_id=pol.id), timeout=60)
    assert again.runs_started == 0 and len(again.runs) == 0
    # A tag moved to another image (tag -> digest change) is acted on again.
    moved = builder.image("5.0-stable")
    push(moved, dev, "dev/website")
    third = clients.gateway.Reconcile(gateway_pb2.ReconcileRequest(policy_id=pol.id), timeout=60)
    assert third.runs_started == 1
    wait_for(
        lambda: skopeo_digest(qa, "qa/website", "5.0-stable") == moved.digest, 30, "the new digest"
    )
    assert len(clients.transfers("qa/website")) == 2


def test_sweep_run_left_pending_by_a_crash_is_started_on_restart(
    registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    from gateway.runs import RunRecord, RunStore
    from gateway.schema import open_database

    stack = StackProcess(
        tmp_path / "data", webhook_secret=WEBHOOK_SECRET, extra_args=["--reconcile-interval", "0"]
    )
    stack.start()
    try:
        dev = registry_factory()
        qa = registry_factory()
        c = Clients(stack.grpc_address)
        c.add_endpoint("dev", dev)
        c.add_endpoint("qa", qa)
        pol = c.add_policy("p", "dev/website", 'tag endswith "stable"', "qa", "qa/website")
        img = ImageBuilder(tmp_path / "img").image("11.0-stable")
        push(img, dev, "dev/website")
        c.close()
        stack.kill()
        # The state a crash leaves between recording a Reconcile run and StartTransfer.
        db = open_database(tmp_path / "data")
        RunStore(db).upsert_started(
            RunRecord(
                id="", policy_id=pol.id, policy_name="p",
                event_id=f"reconcile:dev/dev/website:11.0-stable@{img.digest}#0",
                trigger=Run.TRIGGER_RECONCILE, src_endpoint="dev", src_repository="dev/website",
                src_tag="11.0-stable", src_digest=img.digest, dst_endpoint="qa",
                dst_repository="qa/website", dst_tag="11.0-stable", state=Run.STATE_PENDING,
            )
        )
        db.close()

        stack.start()
        c = Clients(stack.grpc_address)
        (run,) = c.wait_runs_final(pol.id, 1)
        assert run.state == Run.STATE_SUCCEEDED and run.transfer_id
        assert skopeo_digest(qa, "qa/website", "11.0-stable") == img.digest
        c.close()
    finally:
        stack.stop()


def test_periodic_reconcile_mirrors_a_lost_push_without_a_call(
    registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    stack = StackProcess(
        tmp_path / "data", webhook_secret=WEBHOOK_SECRET, extra_args=["--reconcile-interval", "1"]
    )
    stack.start()
    try:
        c = Clients(stack.grpc_address)
        dev = registry_factory()  # sends no events: only the periodic sweep can see the push
        qa = registry_factory()
        c.add_endpoint("dev", dev)
        c.add_endpoint("qa", qa)
        pol = c.add_policy("p", "dev/website", 'tag endswith "stable"', "qa", "qa/website")
        c.wait_baseline(pol.id)
        img = ImageBuilder(tmp_path / "img").image("12.0-stable")
        push(img, dev, "dev/website")
        wait_for(lambda: tags_of(qa, "qa/website") == ["12.0-stable"], 60, "the swept tag")
        assert skopeo_digest(qa, "qa/website", "12.0-stable") == img.digest
        (run,) = c.wait_runs_final(pol.id, 1)
        assert run.trigger == Run.TRIGGER_RECONCILE and run.state == Run.STATE_SUCCEEDED
        # Later sweeps see the tag covered: still one run, one transfer.
        time.sleep(2.5)
        assert len(c.runs(pol.id)) == 1 and len(c.transfers("qa/website")) == 1
        c.close()
    finally:
        stack.stop()
