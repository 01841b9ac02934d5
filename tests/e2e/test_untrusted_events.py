"""Events are claims, the source registry is the truth (issue 10, findings 2 and 3).

A forged event naming a tag that does not exist, or a captured event re-posted under a new id,
changes no destination tag: the gateway resolves the tag at the source and copies what it
points to now. Of two pushes of one tag, the older never wins: its transfer, still running
when the newer push arrives, is superseded (the gateway asks the transfer service to write
the tag only while the source tag still names the digest it verified), and its event
delivered again after the newer one was mirrored changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mirror.v1 import gateway_pb2, transfer_pb2

from registry_testkit.faultproxy import FaultProxy
from registry_testkit.images import ImageBuilder, push
from registry_testkit.registry import RegistryProcess
from stack.process import StackProcess
from tests.e2e.conftest import WEBHOOK_SECRET, Clients, notify_config, wait_for
from tests.e2e.helpers import post_events, push_event, skopeo_digest, tags_of
from tests.support.registry import RegistryFactory

pytestmark = pytest.mark.registry

Run = gateway_pb2.Run
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def test_forged_tag_and_replayed_event_change_nothing(
    stack: StackProcess, clients: Clients, registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    dev = registry_factory(notifications=[notify_config(stack)])
    qa = registry_factory()
    clients.add_endpoint("dev", dev)
    clients.add_endpoint("qa", qa)
    pol = clients.add_policy("stable", "web", 'tag endswith "stable"', "qa", "web")
    images = ImageBuilder(tmp_path / "img")
    dev_build = push(images.image("2.0-dev", layers=(1111,)), dev, "web")
    old = push(images.image("1.0-stable", layers=(2222,)), dev, "web")
    wait_for(lambda: tags_of(qa, "web") == ["1.0-stable"], 60, "1.0-stable mirrored")
    new = push(images.image("1.0-stable", layers=(3333,)), dev, "web")
    wait_for(lambda: skopeo_digest(qa, "web", "1.0-stable") == new, 60, "the new 1.0-stable")
    clients.wait_runs_final(pol.id, 2)

    # Someone holding the webhook secret forges a stable tag for the dev build ...
    forged = push_event("forged-1", dev, "web", "9.9-stable", dev_build, OCI_MANIFEST)
    # ... and re-posts the captured event of the old 1.0-stable under a new id.
    replayed = push_event("replayed-1", dev, "web", "1.0-stable", old, OCI_MANIFEST)
    status, _ = post_events(stack.webhook_url, {"events": [forged, replayed]}, WEBHOOK_SECRET)
    assert status == 200

    def by_event() -> dict[str, gateway_pb2.Run] | None:
        runs = {r.event_id: r for r in clients.runs(pol.id)}
        done = {Run.STATE_SKIPPED, Run.STATE_SUCCEEDED, Run.STATE_FAILED, Run.STATE_BLOCKED}
        if all(e in runs and runs[e].state in done for e in ("forged-1", "replayed-1")):
            return runs
        return None

    runs = wait_for(by_event, 60, "runs of both events")
    assert runs["forged-1"].state == Run.STATE_SKIPPED
    assert "does not exist" in runs["forged-1"].message
    assert runs["replayed-1"].state == Run.STATE_SKIPPED
    assert new in runs["replayed-1"].message
    assert tags_of(qa, "web") == ["1.0-stable"]
    assert skopeo_digest(qa, "web", "1.0-stable") == new
    # A reconcile finds nothing to repair either.
    r = clients.gateway.Reconcile(gateway_pb2.ReconcileRequest(policy_id=pol.id), timeout=60)
    assert r.runs_started == 0
    assert skopeo_digest(qa, "web", "1.0-stable") == new


def _event_via(
    proxy: FaultProxy, event_id: str, reg: RegistryProcess, repo: str, tag: str, digest: str
) -> dict[str, Any]:
    """The push event `reg` would send if it were reached at the proxy's address (the address
    its endpoint is registered with)."""
    ev = push_event(event_id, reg, repo, tag, digest, OCI_MANIFEST)
    ev["target"]["url"] = f"{proxy.url}/v2/{repo}/manifests/{digest}"
    ev["request"]["host"] = proxy.host
    return ev


def test_an_older_push_never_wins_slow_or_late(
    stack: StackProcess,
    clients: Clients,
    registry_factory: RegistryFactory,
    fault_proxy: Callable[[str], FaultProxy],
    tmp_path: Path,
) -> None:
    """Push `rel` as A, then as B while A's copy is still running (the source is slow to
    send A's layer): the destination ends on B and A's run says it was superseded. Then A's
    event arrives again (retried after 503s, under a new id): nothing changes. Reconcile
    finds nothing to repair after either."""
    dev, qa = registry_factory(), registry_factory()
    proxy = fault_proxy(dev.url)
    clients.transfer.CreateEndpoint(
        transfer_pb2.CreateEndpointRequest(
            endpoint=transfer_pb2.Endpoint(name="dev", url=proxy.url)
        ),
        timeout=30,
    )
    clients.add_endpoint("qa", qa)
    pol = clients.add_policy("rel", "web", 'tag == "rel"', "qa", "web")
    clients.wait_baseline(pol.id)
    images = ImageBuilder(tmp_path / "img")
    a = images.image("rel", layers=(300_000,))
    b = images.image("rel", layers=(200_000, 1000))
    layer_a = max(a.blobs, key=lambda d: d.size).digest
    proxy.delay(rf"/blobs/{layer_a}$", 8.0, method="GET")

    def post(event: dict[str, Any]) -> None:
        status, _ = post_events(stack.webhook_url, {"events": [event]}, WEBHOOK_SECRET)
        assert status == 200

    def run_of(event_id: str) -> gateway_pb2.Run | None:
        return next((r for r in clients.runs(pol.id) if r.event_id == event_id), None)

    def final(event_id: str) -> gateway_pb2.Run | None:
        r = run_of(event_id)
        return r if r is not None and r.state not in (Run.STATE_PENDING, Run.STATE_RUNNING) \
            else None

    push(a, dev, "web")
    post(_event_via(proxy, "push-a", dev, "web", "rel", a.digest))
    wait_for(lambda: proxy.requests("GET", rf"/blobs/{layer_a}$"), 60, "A's layer asked for")
    push(b, dev, "web")  # the newer push of the tag, while A's copy waits for its layer
    running = run_of("push-a")
    assert running is not None and running.state == Run.STATE_RUNNING, running
    post(_event_via(proxy, "push-b", dev, "web", "rel", b.digest))

    run_a = wait_for(lambda: final("push-a"), 90, "A's run to end")
    run_b = wait_for(lambda: final("push-b"), 90, "B's run to end")
    assert run_b.state == Run.STATE_SUCCEEDED, run_b.message
    assert run_b.source_digest == b.digest
    assert run_a.state == Run.STATE_SKIPPED, run_a.message
    assert run_a.message.startswith("superseded: ") and b.digest in run_a.message
    assert skopeo_digest(qa, "web", "rel") == b.digest
    # A's transfer ran to its tag check and stopped there; B's came after it.
    ta = clients.transfer.GetTransfer(
        transfer_pb2.GetTransferRequest(id=run_a.transfer_id), timeout=10)
    tb = clients.transfer.GetTransfer(
        transfer_pb2.GetTransferRequest(id=run_b.transfer_id), timeout=10)
    assert ta.state == transfer_pb2.Transfer.STATE_SUPERSEDED
    assert tb.start_time.ToNanoseconds() >= ta.end_time.ToNanoseconds()
    r = clients.gateway.Reconcile(gateway_pb2.ReconcileRequest(policy_id=pol.id), timeout=60)
    assert r.runs_started == 0

    # A's event again, late, under a new id: the tag points at B, which is mirrored already.
    transfers_before = len(clients.transfers("web"))
    post(_event_via(proxy, "push-a-retried", dev, "web", "rel", a.digest))
    late = wait_for(lambda: final("push-a-retried"), 60, "the late event's run")
    assert late.state == Run.STATE_SKIPPED, late.message
    assert b.digest in late.message
    assert len(clients.transfers("web")) == transfers_before  # nothing copied
    assert skopeo_digest(qa, "web", "rel") == b.digest
    r = clients.gateway.Reconcile(gateway_pb2.ReconcileRequest(policy_id=pol.id), timeout=60)
    assert r.runs_started == 0
    assert skopeo_digest(qa, "web", "rel") == b.digest
