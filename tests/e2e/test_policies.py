"""Disabled policies mirror nothing; ApplyPolicy mirrors the tags already in the source."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from mirror.v1 import gateway_pb2

from registry_testkit.images import ImageBuilder, push
from stack.process import StackProcess
from tests.e2e.conftest import Clients, dev_and_qa
from tests.e2e.helpers import skopeo_digest, tags_of
from tests.support.registry import RegistryFactory

pytestmark = pytest.mark.registry

Run = gateway_pb2.Run


def test_disabled_policy_mirrors_nothing(
    stack: StackProcess, clients: Clients, registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    dev, qa = dev_and_qa(clients, registry_factory, stack)
    off = clients.add_policy(
        "off", "dev/website", 'tag endswith "stable"', "qa", "qa/website", enabled=False
    )
    # An enabled policy on the same repository proves the event was acted on.
    on = clients.add_policy("on", "dev/website", 'tag endswith "stable"', "qa", "qa/other")
    push(ImageBuilder(tmp_path / "img").image("6.0-stable"), dev, "dev/website")

    runs = clients.wait_runs_final(on.id, 1)
    assert runs[0].state == Run.STATE_SUCCEEDED
    assert clients.runs(off.id) == []
    assert tags_of(qa, "qa/website") == []
    assert [t.destination.repository for t in clients.transfers()] == ["qa/other"]
    with pytest.raises(grpc.RpcError) as exc:
        clients.gateway.ApplyPolicy(gateway_pb2.ApplyPolicyRequest(policy_id=off.id), timeout=30)
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_apply_policy_mirrors_tags_already_present(
    stack: StackProcess, clients: Clients, registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    # dev sends no events: only ApplyPolicy can find these tags
    dev, qa = dev_and_qa(clients, registry_factory)
    builder = ImageBuilder(tmp_path / "img")
    imgs = {t: builder.image(t) for t in ("7.0-stable", "7.1-stable", "7.2-dev")}
    for img in imgs.values():
        push(img, dev, "dev/website")
    pol = clients.add_policy("p", "dev/website", 'tag endswith "stable"', "qa", "qa/website")

    resp = clients.gateway.ApplyPolicy(gateway_pb2.ApplyPolicyRequest(policy_id=pol.id), timeout=60)
    assert (resp.tags_evaluated, resp.tags_matched) == (3, 2)
    assert {r.trigger for r in resp.runs} == {Run.TRIGGER_APPLY}
    runs = clients.wait_runs_final(pol.id, 3)
    states = {r.source.reference: r.state for r in runs}
    assert states == {
        "7.0-stable": Run.STATE_SUCCEEDED,
        "7.1-stable": Run.STATE_SUCCEEDED,
        "7.2-dev": Run.STATE_NOT_MATCHED,
    }
    assert tags_of(qa, "qa/website") == ["7.0-stable", "7.1-stable"]
    assert skopeo_digest(qa, "qa/website", "7.1-stable") == imgs["7.1-stable"].digest

    # Applying again never mirrors the same image twice.
    again = clients.gateway.ApplyPolicy(
        gateway_pb2.ApplyPolicyRequest(policy_id=pol.id), timeout=60
    )
    assert again.tags_matched == 2
    assert len(clients.transfers("qa/website")) == 2
    with pytest.raises(grpc.RpcError) as exc:
        clients.gateway.ApplyPolicy(gateway_pb2.ApplyPolicyRequest(policy_id="nope"), timeout=30)
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND


def test_apply_policy_with_a_glob_source_uses_the_catalog(
    stack: StackProcess, clients: Clients, registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    dev, qa = dev_and_qa(clients, registry_factory)
    builder = ImageBuilder(tmp_path / "img")
    push(builder.image("a-stable"), dev, "team/app-a")
    push(builder.image("b-stable"), dev, "team/app-b")
    push(builder.image("c-stable"), dev, "other/app-c")  # outside the glob
    pol = clients.add_policy("glob", "team/*", 'tag endswith "stable"', "qa", "qa/team/{path}")

    resp = clients.gateway.ApplyPolicy(gateway_pb2.ApplyPolicyRequest(policy_id=pol.id), timeout=60)
    assert (resp.tags_evaluated, resp.tags_matched) == (2, 2)
    assert sorted(r.source.repository for r in resp.runs) == ["team/app-a", "team/app-b"]
    clients.wait_runs_final(pol.id, 2)
    assert tags_of(qa, "qa/team/app-a") == ["a-stable"]
    assert tags_of(qa, "qa/team/app-b") == ["b-stable"]


def test_scan_facts_come_from_the_scanner(
    stack: StackProcess, clients: Clients, registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    dev, qa = dev_and_qa(clients, registry_factory, stack)
    # This image has no package database and no vulnerability data is loaded: only a policy
    # that opts out of failing closed evaluates the rule (tests/e2e/test_fail_closed.py).
    pol = clients.add_policy(
        "scanned", "dev/website", 'tag endswith "stable" and critical_vulns <= 3', "qa",
        "qa/website", allow_incomplete_facts=True,
    )
    push(ImageBuilder(tmp_path / "img").image("12.0-stable"), dev, "dev/website")
    (run,) = clients.wait_runs_final(pol.id, 1)
    assert run.state == Run.STATE_SUCCEEDED, run.message
    assert tags_of(qa, "qa/website") == ["12.0-stable"]


def test_without_a_scanner_scan_rules_are_blocked_and_say_why(
    registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    from tests.e2e.conftest import WEBHOOK_SECRET

    stack = StackProcess(
        tmp_path / "data", webhook_secret=WEBHOOK_SECRET,
        extra_args=["--reconcile-interval", "0", "--no-scanner"],
    )
    stack.start()
    c = Clients(stack.grpc_address)
    try:
        dev, qa = dev_and_qa(c, registry_factory, stack)
        pol = c.add_policy(
            "scanned", "dev/website", 'tag endswith "stable" and critical_vulns <= 3', "qa",
            "qa/website",
        )
        push(ImageBuilder(tmp_path / "img").image("13.0-stable"), dev, "dev/website")
        (run,) = c.wait_runs_final(pol.id, 1)
        assert run.state == Run.STATE_BLOCKED
        assert "vulnerabilities" in run.message.lower()
        assert "no scanner" in run.message
        assert tags_of(qa, "qa/website") == []
    finally:
        c.close()
        stack.stop()
