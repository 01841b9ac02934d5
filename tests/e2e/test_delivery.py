"""Webhook delivery: a redelivered envelope mirrors once; a bad body loses no good events."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from mirror.v1 import gateway_pb2

from registry_testkit.images import ImageBuilder, push
from stack.process import StackProcess
from tests.e2e.conftest import WEBHOOK_SECRET, Clients, dev_and_qa, wait_for
from tests.e2e.helpers import healthz, post_events, push_event, skopeo_digest, tags_of
from tests.support.registry import RegistryFactory

pytestmark = pytest.mark.registry

Run = gateway_pb2.Run


def test_same_envelope_twice_starts_one_transfer(
    stack: StackProcess, clients: Clients, registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    # dev sends no events: the test delivers them itself
    dev, qa = dev_and_qa(clients, registry_factory)
    pol = clients.add_policy("p", "dev/website", 'tag endswith "stable"', "qa", "qa/website")
    img = ImageBuilder(tmp_path / "img").image("3.0-stable")
    push(img, dev, "dev/website")
    ev = push_event("evt-1", dev, "dev/website", "3.0-stable", img.digest, img.media_type)
    env = {"events": [ev]}

    first = post_events(stack.webhook_url, env, WEBHOOK_SECRET)
    second = post_events(stack.webhook_url, env, WEBHOOK_SECRET)
    assert first == (200, first[1]) and first[1]["accepted"] == 1
    assert second[0] == 200 and second[1]["duplicates"] == 1 and second[1]["accepted"] == 0

    runs = clients.wait_runs_final(pol.id, 1)
    assert len(runs) == 1 and runs[0].state == Run.STATE_SUCCEEDED
    # Redelivered after the run finished: still nothing new.
    third = post_events(stack.webhook_url, env, WEBHOOK_SECRET)
    assert third[1]["duplicates"] == 1
    assert len(clients.transfers("qa/website")) == 1
    assert len(clients.runs(pol.id)) == 1
    assert tags_of(qa, "qa/website") == ["3.0-stable"]


def test_bad_body_next_to_good_events(
    stack: StackProcess, clients: Clients, registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    dev, qa = dev_and_qa(clients, registry_factory)
    pol = clients.add_policy("p", "dev/website", 'tag endswith "stable"', "qa", "qa/website")
    builder = ImageBuilder(tmp_path / "img")
    a, b = builder.image("a-stable"), builder.image("b-stable")
    push(a, dev, "dev/website")
    push(b, dev, "dev/website")

    status, doc = post_events(stack.webhook_url, b"{this is not json", WEBHOOK_SECRET)
    assert status == 400 and "not JSON" in doc["error"]
    status, doc = post_events(stack.webhook_url, {"events": [{"action": "push"}]}, WEBHOOK_SECRET)
    assert status == 400 and doc["rejected"][0]["reason"]
    good_a = push_event("ev-a", dev, "dev/website", "a-stable", a.digest, a.media_type)
    status, _ = post_events(stack.webhook_url, {"events": [good_a]}, WEBHOOK_SECRET)
    assert status == 200
    # A body mixing a good event with a malformed one keeps the good one.
    good_b = push_event("ev-b", dev, "dev/website", "b-stable", b.digest, b.media_type)
    broken = push_event("ev-broken", dev, "dev/website", "c-stable", "sha256:zz", b.media_type)
    status, doc = post_events(stack.webhook_url, {"events": [good_b, broken]}, WEBHOOK_SECRET)
    assert status == 200 and doc["accepted"] == 1
    assert [r["id"] for r in doc["rejected"]] == ["ev-broken"]

    runs = clients.wait_runs_final(pol.id, 2)
    assert sorted(r.source.reference for r in runs) == ["a-stable", "b-stable"]
    assert all(r.state == Run.STATE_SUCCEEDED for r in runs)
    wait_for(lambda: tags_of(qa, "qa/website") == ["a-stable", "b-stable"], 30, "qa tags")
    assert skopeo_digest(qa, "qa/website", "b-stable") == b.digest


def test_event_from_an_unknown_registry_is_recorded_not_acted_on(
    stack: StackProcess, clients: Clients, registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    dev = registry_factory()
    stranger = registry_factory()  # never registered as an endpoint
    qa = registry_factory()
    clients.add_endpoint("dev", dev)
    clients.add_endpoint("qa", qa)
    pol = clients.add_policy("p", "dev/website", 'tag endswith "stable"', "qa", "qa/website")
    img = ImageBuilder(tmp_path / "img").image("9.0-stable")
    push(img, stranger, "dev/website")
    ev = push_event("from-stranger", stranger, "dev/website", "9.0-stable", img.digest,
                    img.media_type)
    assert post_events(stack.webhook_url, {"events": [ev]}, WEBHOOK_SECRET)[0] == 200
    wait_for(
        lambda: healthz(stack.http_base)["events"].get("unknown_source") == 1, 20,
        "the event to be recorded as from an unknown source",
    )
    assert clients.runs(pol.id) == [] and clients.transfers() == []


def test_notify_push_for_ci_systems(
    stack: StackProcess, clients: Clients, registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    # dev sends no events: CI reports the push itself
    dev, qa = dev_and_qa(clients, registry_factory)
    pol = clients.add_policy("p", "dev/website", 'tag endswith "stable"', "qa", "qa/website")
    img = ImageBuilder(tmp_path / "img").image("10.0-stable")
    push(img, dev, "dev/website")
    req = gateway_pb2.NotifyPushRequest(
        endpoint="dev", repository="dev/website", tag="10.0-stable", event_id="ci-build-42"
    )
    first = clients.gateway.NotifyPush(req, timeout=10)
    assert first.event_id == "ci-build-42" and not first.duplicate
    assert clients.gateway.NotifyPush(req, timeout=10).duplicate
    runs = clients.wait_runs_final(pol.id, 1)
    assert runs[0].state == Run.STATE_SUCCEEDED and runs[0].trigger == Run.TRIGGER_NOTIFY
    assert runs[0].source_digest == img.digest  # resolved from the tag
    assert skopeo_digest(qa, "qa/website", "10.0-stable") == img.digest
    with pytest.raises(grpc.RpcError) as exc:
        clients.gateway.NotifyPush(
            gateway_pb2.NotifyPushRequest(endpoint="nope", repository="dev/website", tag="x"),
            timeout=10,
        )
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as exc:
        clients.gateway.NotifyPush(
            gateway_pb2.NotifyPushRequest(endpoint="dev", repository="Bad Name", tag=""),
            timeout=10,
        )
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
