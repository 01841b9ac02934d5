"""Deletions, opt-in per policy (issue 12, item 5): a tag deleted at the source is deleted at
the destination only when the policy opted in and only if this policy wrote it; prune removes
mirrored tags that no longer match; both have a dry run."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from mirror.v1 import gateway_pb2, policy_pb2

from registry_testkit.images import ImageBuilder, push
from registry_testkit.registry import RegistryProcess
from stack.process import StackProcess
from tests.e2e.conftest import Clients, dev_and_qa, wait_for
from tests.e2e.helpers import skopeo_digest, tags_of
from tests.support.registry import RegistryFactory

pytestmark = pytest.mark.registry

Run = gateway_pb2.Run


def delete_at(reg: RegistryProcess, repo: str, digest: str) -> None:
    req = urllib.request.Request(f"{reg.url}/v2/{repo}/manifests/{digest}", method="DELETE")
    with urllib.request.urlopen(req, timeout=10, context=reg.ssl_context()) as resp:
        assert resp.status == 202


def reconcile(clients: Clients, policy_id: str) -> gateway_pb2.ReconcileResponse:
    return clients.gateway.Reconcile(gateway_pb2.ReconcileRequest(policy_id=policy_id), timeout=60)


def test_source_deletion_propagates_only_when_opted_in_and_only_what_the_policy_wrote(
    stack: StackProcess, clients: Clients, registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    dev, qa = dev_and_qa(clients, registry_factory, stack)
    follow = clients.add_policy("follow", "dev/app", "true", "qa", "qa/app")
    clients.policy.UpdatePolicy(
        policy_pb2.UpdatePolicyRequest(
            policy=policy_pb2.Policy(id=follow.id, deletions=policy_pb2.DELETION_MODE_PROPAGATE),
            update_mask=FieldMask(paths=["deletions"]),
        ),
        timeout=30,
    )
    dry = clients.add_policy("dry", "dev/app", "true", "qa", "qa/app-dry")
    clients.policy.UpdatePolicy(
        policy_pb2.UpdatePolicyRequest(
            policy=policy_pb2.Policy(id=dry.id, deletions=policy_pb2.DELETION_MODE_DRY_RUN),
            update_mask=FieldMask(paths=["deletions"]),
        ),
        timeout=30,
    )
    keep = clients.add_policy("keep", "dev/app", "true", "qa", "qa/app-keep")
    images = ImageBuilder(tmp_path / "img")
    one = push(images.image("1.0", layers=(1200,)), dev, "dev/app")
    push(images.image("2.0", layers=(2200,)), dev, "dev/app")
    for repo in ("qa/app", "qa/app-dry", "qa/app-keep"):
        wait_for(lambda r=repo: tags_of(qa, r) == ["1.0", "2.0"], 60, f"{repo} mirrored")
    # Someone else's tag in the destination repository: never this policy's to delete.
    theirs = push(images.image("9.9", layers=(3300,)), qa, "qa/app")
    for pol in (follow, dry, keep):
        clients.wait_runs_final(pol.id, 2)

    delete_at(dev, "dev/app", one)
    # The deletion's event is not what is tested here (2.8.2 sends none for a tag); Reconcile
    # finds the tag gone.
    for pol in (follow, dry, keep):
        reconcile(clients, pol.id)
    assert tags_of(qa, "qa/app") == ["2.0", "9.9"]
    assert skopeo_digest(qa, "qa/app", "9.9") == theirs
    assert tags_of(qa, "qa/app-dry") == ["1.0", "2.0"]
    assert tags_of(qa, "qa/app-keep") == ["1.0", "2.0"]
    deleted = [r for r in clients.runs(follow.id) if r.action == Run.ACTION_DELETE]
    assert len(deleted) == 1 and deleted[0].state == Run.STATE_SUCCEEDED
    assert deleted[0].destination_tag == "1.0" and "gone at the source" in deleted[0].cause
    would = [r for r in clients.runs(dry.id) if r.action == Run.ACTION_DELETE_DRY_RUN]
    assert len(would) == 1 and "would delete qa/app-dry:1.0" in would[0].message
    assert not [r for r in clients.runs(keep.id) if r.action != Run.ACTION_COPY]
    # Reconciling again deletes nothing more.
    reconcile(clients, follow.id)
    assert len([r for r in clients.runs(follow.id) if r.action == Run.ACTION_DELETE]) == 1


def test_prune_removes_only_mirrored_tags_that_no_longer_match(
    stack: StackProcess, clients: Clients, registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    dev, qa = dev_and_qa(clients, registry_factory, stack)
    pol = clients.add_policy("p", "dev/app", 'tag startswith "1."', "qa", "qa/app")
    images = ImageBuilder(tmp_path / "img")
    for tag in ("1.0", "1.1"):
        push(images.image(tag), dev, "dev/app")
    wait_for(lambda: tags_of(qa, "qa/app") == ["1.0", "1.1"], 60, "mirrored")
    push(images.image("other"), qa, "qa/app", tag="2.0")
    clients.wait_runs_final(pol.id, 2)
    current = clients.policy.GetPolicy(policy_pb2.GetPolicyRequest(id=pol.id), timeout=10)
    clients.policy.UpdatePolicy(
        policy_pb2.UpdatePolicyRequest(
            policy=policy_pb2.Policy(id=pol.id, rule='tag == "1.1"', etag=current.etag),
            update_mask=FieldMask(paths=["rule"]),
        ),
        timeout=30,
    )
    listed = clients.gateway.PrunePolicy(
        gateway_pb2.PrunePolicyRequest(policy_id=pol.id, dry_run=True), timeout=60
    )
    assert [(r.destination_tag, r.action) for r in listed.runs] == [
        ("1.0", Run.ACTION_DELETE_DRY_RUN)
    ]
    assert listed.tags_kept == 1
    assert tags_of(qa, "qa/app") == ["1.0", "1.1", "2.0"]
    pruned = clients.gateway.PrunePolicy(
        gateway_pb2.PrunePolicyRequest(policy_id=pol.id), timeout=60
    )
    assert [(r.destination_tag, r.state) for r in pruned.runs] == [("1.0", Run.STATE_SUCCEEDED)]
    assert tags_of(qa, "qa/app") == ["1.1", "2.0"]
