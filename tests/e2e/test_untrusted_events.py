"""Events are claims, the source registry is the truth (issue 10, finding 2).

A forged event naming a tag that does not exist, or a captured event re-posted under a new id,
changes no destination tag: the gateway resolves the tag at the source and copies what it
points to now.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mirror.v1 import gateway_pb2

from registry_testkit.images import ImageBuilder, push
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
