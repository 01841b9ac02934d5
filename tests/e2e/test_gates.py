"""Policies that cannot leak (issue 9): source-scoped, loop-safe, mapped, Save vs Apply.

Real registries send their push events to a real `mirror-stack`; what the QA registry gets is
read back with the registry API and skopeo.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2
from mirror.v1 import gateway_pb2, policy_pb2, transfer_pb2

from registry_testkit.images import ImageBuilder, push
from stack.process import StackProcess
from tests.e2e.conftest import WEBHOOK_SECRET, Clients, notify_config, wait_for
from tests.e2e.helpers import healthz, skopeo_digest, tags_of
from tests.support.registry import RegistryFactory

pytestmark = pytest.mark.registry

Run = gateway_pb2.Run


def settled(stack: StackProcess, events: int) -> None:
    """Wait until at least `events` events were received and none is left to act on."""

    def check() -> bool:
        doc = healthz(stack.http_base)
        handled = sum(n for state, n in doc["events"].items() if state != "pending")
        return handled >= events and doc["inbox_depth"] == 0

    wait_for(check, 60, f"{events} events acted on")


def transfers_to(clients: Clients, endpoint: str) -> list[Any]:
    return [t for t in clients.transfers() if t.destination.endpoint == endpoint]


def test_same_name_mirror_and_timestamp_mirror_copy_once(
    stack: StackProcess, clients: Clients, registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    # Both registries send events: what our transfers push to QA comes back as events.
    dev = registry_factory(notifications=[notify_config(stack)])
    qa = registry_factory(notifications=[notify_config(stack)])
    clients.add_endpoint("dev", dev)
    clients.add_endpoint("qa", qa)
    same = clients.add_policy("same-name", "team/app", "true", "qa", "team/app")
    stamped = clients.add_policy(
        "stamped", "team/website", "true", "qa", "team/website", template="%Y%m%d-%H%M%S-%n"
    )
    images = ImageBuilder(tmp_path / "img")
    push(images.image("1.0"), dev, "team/app")
    push(images.image("1.4-stable"), dev, "team/website")

    wait_for(lambda: tags_of(qa, "team/app") == ["1.0"], 60, "team/app:1.0 in qa")
    wait_for(lambda: len(tags_of(qa, "team/website")) == 1, 60, "one team/website tag in qa")
    # Two pushes to dev, two echoes from qa: all four acted on, and nothing more happened.
    settled(stack, 4)
    assert tags_of(qa, "team/app") == ["1.0"]
    (qa_tag,) = tags_of(qa, "team/website")
    assert qa_tag.endswith("-1.4-stable") and qa_tag.count("-1.4-stable") == 1
    assert len(transfers_to(clients, "qa")) == 2
    assert [r.state for r in clients.wait_runs_final(same.id, 1)] == [Run.STATE_SUCCEEDED]
    assert [r.state for r in clients.wait_runs_final(stamped.id, 1)] == [Run.STATE_SUCCEEDED]
    assert skopeo_digest(qa, "team/website", qa_tag) == skopeo_digest(
        dev, "team/website", "1.4-stable"
    )


def test_cycle_with_timestamp_refused_plain_cycle_converges(
    stack: StackProcess, clients: Clients, registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    dev = registry_factory(notifications=[notify_config(stack)])
    qa = registry_factory(notifications=[notify_config(stack)])
    clients.add_endpoint("dev", dev)
    clients.add_endpoint("qa", qa)
    there = clients.add_policy("there", "team/app", "true", "qa", "team/app")
    with pytest.raises(grpc.RpcError) as refused:
        clients.add_policy(
            "back-stamped", "team/app", "true", "dev", "team/app",
            template="%Y%m%d-%n", source_endpoint="qa",
        )
    assert refused.value.code() in (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert "there" in refused.value.details() and "back-stamped" in refused.value.details()
    back = clients.add_policy("back", "team/app", "true", "dev", "team/app", source_endpoint="qa")

    images = ImageBuilder(tmp_path / "img")
    push(images.image("1.0"), dev, "team/app")
    wait_for(lambda: tags_of(qa, "team/app") == ["1.0"], 60, "1.0 copied to qa")
    push(images.image("2.0"), qa, "team/app")
    wait_for(lambda: tags_of(dev, "team/app") == ["1.0", "2.0"], 60, "2.0 copied to dev")
    # dev push, its qa echo, qa push, its dev echo.
    settled(stack, 4)
    assert tags_of(qa, "team/app") == ["1.0", "2.0"]
    assert len(clients.transfers()) == 2, "one copy each way"
    for tag in ("1.0", "2.0"):
        assert skopeo_digest(dev, "team/app", tag) == skopeo_digest(qa, "team/app", tag)
    echo = {r.source.reference: r for r in clients.wait_runs_final(back.id, 2)}
    assert echo["2.0"].state == Run.STATE_SUCCEEDED
    # The echo of 1.0 in qa: the way back is already up to date; nothing is copied.
    assert echo["1.0"].state in (Run.STATE_SKIPPED, Run.STATE_BLOCKED)
    assert echo["1.0"].provenance[0].endpoint == "dev" and echo["1.0"].hop == 1
    assert {r.state for r in clients.wait_runs_final(there.id, 2)} <= {
        Run.STATE_SUCCEEDED, Run.STATE_SKIPPED, Run.STATE_BLOCKED
    }


def test_same_repository_name_on_another_registry_triggers_nothing(
    stack: StackProcess, clients: Clients, registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    dev = registry_factory(notifications=[notify_config(stack)])
    qa = registry_factory(notifications=[notify_config(stack)])
    prod = registry_factory()
    clients.add_endpoint("dev", dev)
    clients.add_endpoint("qa", qa)
    clients.add_endpoint("prod", prod)
    to_prod = clients.add_policy(
        "qa-to-prod", "qa/website", 'tag endswith "stable"', "prod", "prod/website",
        source_endpoint="qa",
    )
    images = ImageBuilder(tmp_path / "img")
    # A developer pushes a repository named like QA's to the dev registry: past no gate.
    push(images.image("1.0-stable"), dev, "qa/website")
    settled(stack, 1)
    assert tags_of(prod, "prod/website") == []
    assert clients.runs(to_prod.id) == []
    # The same push to the QA registry is promoted.
    push(images.image("1.1-stable"), qa, "qa/website")
    wait_for(lambda: tags_of(prod, "prod/website") == ["1.1-stable"], 60, "promoted from qa")


def test_glob_maps_each_repository_to_its_own_destination(
    stack: StackProcess, clients: Clients, registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    dev = registry_factory(notifications=[notify_config(stack)])
    qa = registry_factory()
    clients.add_endpoint("dev", dev)
    clients.add_endpoint("qa", qa)
    with pytest.raises(grpc.RpcError) as refused:
        clients.add_policy("one-target", "team/**", "true", "qa", "mirror/all")
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "team/**" in refused.value.details()
    pol = clients.add_policy("mapped", "team/**", "true", "qa", "mirror/{path}")
    images = ImageBuilder(tmp_path / "img")
    a = push(images.image("1.0", layers=(1000,)), dev, "team/a")
    b = push(images.image("1.0", layers=(2000,)), dev, "team/sub/b")
    assert a != b
    wait_for(lambda: tags_of(qa, "mirror/a") == ["1.0"], 60, "mirror/a:1.0")
    wait_for(lambda: tags_of(qa, "mirror/sub/b") == ["1.0"], 60, "mirror/sub/b:1.0")
    assert skopeo_digest(qa, "mirror/a", "1.0") == a
    assert skopeo_digest(qa, "mirror/sub/b", "1.0") == b
    runs = clients.wait_runs_final(pol.id, 2)
    assert sorted(r.destination.repository for r in runs) == ["mirror/a", "mirror/sub/b"]


def test_save_acts_on_new_pushes_apply_on_what_is_there(
    stack: StackProcess, clients: Clients, registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    # dev sends no events: only Reconcile and Apply can find its tags.
    dev = registry_factory()
    qa = registry_factory()
    clients.add_endpoint("dev", dev)
    clients.add_endpoint("qa", qa)
    images = ImageBuilder(tmp_path / "img")
    push(images.image("0.9-stable"), dev, "dev/website")
    pol = clients.add_policy("p", "dev/website", 'tag endswith "stable"', "qa", "qa/website")

    # The first reconcile (or the baseline watcher before it) records what was there.
    clients.gateway.Reconcile(gateway_pb2.ReconcileRequest(policy_id=pol.id), timeout=60)
    again = clients.gateway.Reconcile(gateway_pb2.ReconcileRequest(policy_id=pol.id), timeout=60)
    assert again.runs_started == 0 and not again.errors
    assert tags_of(qa, "qa/website") == []

    # A push after Save whose event was lost: Reconcile fills it in, and only it.
    push(images.image("1.0-stable"), dev, "dev/website")
    r = clients.gateway.Reconcile(gateway_pb2.ReconcileRequest(policy_id=pol.id), timeout=60)
    assert [x.source.reference for x in r.runs] == ["1.0-stable"]
    wait_for(lambda: tags_of(qa, "qa/website") == ["1.0-stable"], 60, "1.0-stable mirrored")

    # Save & Apply mirrors the old tag too.
    applied = clients.gateway.ApplyPolicy(
        gateway_pb2.ApplyPolicyRequest(policy_id=pol.id), timeout=60
    )
    assert applied.tags_matched == 2
    wait_for(
        lambda: tags_of(qa, "qa/website") == ["0.9-stable", "1.0-stable"], 60, "0.9 applied"
    )
    assert len(clients.transfers()) == 2, "Apply does not copy 1.0-stable a second time"


def test_reconcile_repairs_a_destination_that_drifted(
    stack: StackProcess, clients: Clients, registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    dev = registry_factory(notifications=[notify_config(stack)])
    qa = registry_factory()
    clients.add_endpoint("dev", dev)
    clients.add_endpoint("qa", qa)
    pol = clients.add_policy("p", "dev/website", "true", "qa", "qa/website")
    images = ImageBuilder(tmp_path / "img")
    good = push(images.image("1.0", layers=(1500,)), dev, "dev/website")
    wait_for(lambda: tags_of(qa, "qa/website") == ["1.0"], 60, "mirrored")
    clients.wait_runs_final(pol.id, 1)
    # Someone overwrites the QA tag by hand.
    push(images.image("other", layers=(2500,)), qa, "qa/website", tag="1.0")
    assert skopeo_digest(qa, "qa/website", "1.0") != good
    r = clients.gateway.Reconcile(gateway_pb2.ReconcileRequest(policy_id=pol.id), timeout=60)
    assert len(r.runs) == 1 and r.runs[0].cause.startswith("repair:"), r.runs

    def repaired() -> bool:
        try:
            return skopeo_digest(qa, "qa/website", "1.0") == good
        except RuntimeError:
            return False  # 2.8.2 may answer 500 while the repair rewrites the tag's link

    wait_for(repaired, 60, "repaired")


def test_apply_and_reconcile_carry_on_past_a_broken_endpoint(
    stack: StackProcess, clients: Clients, registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    dev = registry_factory()
    qa = registry_factory()
    broken = registry_factory()
    clients.add_endpoint("dev", dev)
    clients.add_endpoint("qa", qa)
    clients.add_endpoint("broken", broken)
    images = ImageBuilder(tmp_path / "img")
    push(images.image("1.0"), dev, "dev/website")
    good = clients.add_policy("good", "dev/website", "true", "qa", "qa/website")
    bad = clients.add_policy(
        "bad", "team/**", "true", "qa", "from-broken/{path}", source_endpoint="broken"
    )
    # The broken registry goes away after the policies were saved.
    broken.stop()
    applied = clients.gateway.ApplyPolicy(
        gateway_pb2.ApplyPolicyRequest(policy_id=good.id), timeout=60
    )
    assert applied.tags_matched == 1 and not applied.errors
    wait_for(lambda: tags_of(qa, "qa/website") == ["1.0"], 60, "good policy applied")
    # A push whose event was lost (dev sends none): the full sweep still finds it.
    clients.wait_baseline(good.id)
    push(images.image("1.1"), dev, "dev/website")
    r = clients.gateway.Reconcile(gateway_pb2.ReconcileRequest(), timeout=60)
    assert [e.endpoint for e in r.errors] == ["broken"]
    assert r.errors[0].policy_id == bad.id
    assert [(x.policy_id, x.source.reference) for x in r.runs] == [(good.id, "1.1")]
    wait_for(lambda: tags_of(qa, "qa/website") == ["1.0", "1.1"], 60, "1.1 reconciled")


def test_endpoint_in_use_cannot_be_deleted(
    stack: StackProcess, clients: Clients, registry_factory: RegistryFactory
) -> None:
    dev = registry_factory()
    qa = registry_factory()
    clients.add_endpoint("dev", dev)
    clients.add_endpoint("qa", qa)
    pol = clients.add_policy("dev-to-qa", "dev/website", "true", "qa", "qa/website")
    for name in ("qa", "dev"):
        with pytest.raises(grpc.RpcError) as refused:
            clients.transfer.DeleteEndpoint(
                transfer_pb2.DeleteEndpointRequest(name=name), timeout=30
            )
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "dev-to-qa" in refused.value.details(), refused.value.details()
    clients.policy.DeletePolicy(policy_pb2.DeletePolicyRequest(id=pol.id), timeout=30)
    clients.transfer.DeleteEndpoint(transfer_pb2.DeleteEndpointRequest(name="qa"), timeout=30)


def test_overwrite_never_leaves_a_tag_holding_another_digest_and_says_so(
    stack: StackProcess, clients: Clients, registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    dev = registry_factory(notifications=[notify_config(stack)])
    qa = registry_factory()
    clients.add_endpoint("dev", dev)
    clients.add_endpoint("qa", qa)
    images = ImageBuilder(tmp_path / "img")
    # QA already holds its own 1.0, and another tag that this push will fill in.
    theirs = push(images.image("theirs", layers=(3000,)), qa, "team/app", tag="1.0")
    pol = clients.add_policy(
        "keep", "team/app", "true", "qa", "team/app", overwrite=policy_pb2.OVERWRITE_NEVER
    )
    ours = push(images.image("1.0", layers=(1200,)), dev, "team/app")
    new = push(images.image("1.1", layers=(1300,)), dev, "team/app")
    assert ours != theirs

    runs = {r.source.reference: r for r in clients.wait_runs_final(pol.id, 2)}
    assert runs["1.0"].state == Run.STATE_SKIPPED
    assert runs["1.0"].message.startswith("not overwritten:"), runs["1.0"].message
    assert theirs in runs["1.0"].message and "never overwrites" in runs["1.0"].message
    assert runs["1.1"].state == Run.STATE_SUCCEEDED
    assert skopeo_digest(qa, "team/app", "1.0") == theirs
    assert skopeo_digest(qa, "team/app", "1.1") == new
    assert [t.destination.tag for t in transfers_to(clients, "qa")] == ["1.1"]


def test_a_run_never_copies_back_into_a_place_on_its_chain(
    stack: StackProcess, clients: Clients, registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    # Neither registry sends events: NotifyPush stands in for them, so the order is ours.
    dev = registry_factory()
    qa = registry_factory()
    clients.add_endpoint("dev", dev)
    clients.add_endpoint("qa", qa)
    there = clients.add_policy("there", "team/app", "true", "qa", "team/app")
    # A %n cycle is allowed (it converges), so the way back is saved.
    back = clients.add_policy("back", "team/app", "true", "dev", "team/app", source_endpoint="qa")
    images = ImageBuilder(tmp_path / "img")
    first = push(images.image("1.0", layers=(1100,)), dev, "team/app")
    clients.gateway.NotifyPush(
        gateway_pb2.NotifyPushRequest(endpoint="dev", repository="team/app", tag="1.0"),
        timeout=30,
    )
    wait_for(lambda: tags_of(qa, "team/app") == ["1.0"], 60, "1.0 copied to qa")
    assert [r.state for r in clients.wait_runs_final(there.id, 1)] == [Run.STATE_SUCCEEDED]
    # dev moves on before QA's (late) echo of our own copy arrives.
    second = push(images.image("1.0", layers=(2100,)), dev, "team/app")
    assert second != first
    clients.gateway.NotifyPush(
        gateway_pb2.NotifyPushRequest(endpoint="qa", repository="team/app", tag="1.0"),
        timeout=30,
    )
    (echo,) = clients.wait_runs_final(back.id, 1)
    assert echo.state == Run.STATE_BLOCKED, echo
    assert "already on this image's promotion chain" in echo.message, echo.message
    assert "dev/team/app" in echo.message
    assert [(p.endpoint, p.repository) for p in echo.provenance] == [("dev", "team/app")]
    # dev keeps its new image; the old one is not copied back over it.
    assert skopeo_digest(dev, "team/app", "1.0") == second
    assert len(clients.transfers()) == 1


def test_hop_limit_blocks_a_chain_longer_than_allowed(
    registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    stack = StackProcess(
        tmp_path / "stack-data",
        webhook_secret=WEBHOOK_SECRET,
        extra_args=["--reconcile-interval", "0", "--max-hops", "2"],
    )
    stack.start()
    clients = Clients(stack.grpc_address)
    try:
        dev = registry_factory(notifications=[notify_config(stack)])
        qa = registry_factory(notifications=[notify_config(stack)])
        prod = registry_factory(notifications=[notify_config(stack)])
        dr = registry_factory()
        for name, reg in (("dev", dev), ("qa", qa), ("prod", prod), ("dr", dr)):
            clients.add_endpoint(name, reg)
        clients.add_policy("to-qa", "app", "true", "qa", "app")
        to_prod = clients.add_policy("to-prod", "app", "true", "prod", "app", source_endpoint="qa")
        to_dr = clients.add_policy("to-dr", "app", "true", "dr", "app", source_endpoint="prod")
        images = ImageBuilder(tmp_path / "img")
        pushed = push(images.image("1.0"), dev, "app")

        # dev -> qa is hop 0, qa -> prod hop 1; prod -> dr would be hop 2, past the limit.
        wait_for(lambda: tags_of(prod, "app") == ["1.0"], 60, "1.0 promoted to prod")
        (blocked,) = clients.wait_runs_final(to_dr.id, 1)
        assert blocked.state == Run.STATE_BLOCKED, blocked
        assert "hop limit 2 reached" in blocked.message, blocked.message
        assert "dev/app:1.0 -> qa/app:1.0 -> prod/app:1.0" in blocked.message
        assert tags_of(dr, "app") == []
        (promoted,) = clients.wait_runs_final(to_prod.id, 1)
        assert promoted.state == Run.STATE_SUCCEEDED and promoted.hop == 1
        assert skopeo_digest(prod, "app", "1.0") == pushed
    finally:
        clients.close()
        stack.stop()


def test_enabling_a_policy_acts_on_pushes_from_then_on(
    stack: StackProcess, clients: Clients, registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    # dev sends no events: what Reconcile finds is all there is.
    dev = registry_factory()
    qa = registry_factory()
    clients.add_endpoint("dev", dev)
    clients.add_endpoint("qa", qa)
    pol = clients.add_policy("p", "dev/website", "true", "qa", "qa/website")
    clients.wait_baseline(pol.id)

    def set_enabled(on: bool) -> policy_pb2.Policy:
        return clients.policy.UpdatePolicy(
            policy_pb2.UpdatePolicyRequest(
                policy=policy_pb2.Policy(id=pol.id, enabled=on),
                update_mask=field_mask_pb2.FieldMask(paths=["enabled"]),
            ),
            timeout=30,
        )

    set_enabled(False)
    images = ImageBuilder(tmp_path / "img")
    push(images.image("1.0"), dev, "dev/website")  # while the gate was off
    enabled = set_enabled(True)
    assert enabled.active_since.ToNanoseconds() > pol.active_since.ToNanoseconds()
    first = clients.gateway.Reconcile(gateway_pb2.ReconcileRequest(policy_id=pol.id), timeout=60)
    assert first.runs_started == 0 and not first.errors
    push(images.image("1.1"), dev, "dev/website")
    later = clients.gateway.Reconcile(gateway_pb2.ReconcileRequest(policy_id=pol.id), timeout=60)
    assert [r.source.reference for r in later.runs] == ["1.1"]
    wait_for(lambda: tags_of(qa, "qa/website") == ["1.1"], 60, "only 1.1 mirrored")
    # Save & Apply after enabling is what brings the older tag along.
    clients.gateway.ApplyPolicy(gateway_pb2.ApplyPolicyRequest(policy_id=pol.id), timeout=60)
    wait_for(lambda: tags_of(qa, "qa/website") == ["1.0", "1.1"], 60, "1.0 applied")
