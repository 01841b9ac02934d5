"""Real docker-registry 2.8.2 notifications to a real `mirror-stack`: per-endpoint webhook
tokens, forged events on the shared path, hostile bodies, and unplaced events with the alias
that would place them."""

from __future__ import annotations

import sqlite3
import types
import urllib.request
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2
from mirror.v1 import gateway_pb2, gateway_pb2_grpc, transfer_pb2, transfer_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from registry_testkit.images import ImageBuilder, push
from registry_testkit.registry import RegistryProcess
from stack.process import StackProcess
from tests.e2e.conftest import wait_for
from tests.e2e.helpers import post_events, push_event
from tests.support.registry import RegistryFactory

pytestmark = pytest.mark.registry

SHARED = "shared-webhook-secret-0123456789"
OCI = "application/vnd.oci.image.manifest.v1+json"
# What the gateway documents: blob pushes and pulls are not sent at all (2.8.2 honours
# ignore.actions only when ignore.mediatypes lists something too).
IGNORE = {"mediatypes": ["application/octet-stream"], "actions": ["pull"]}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackProcess]:
    proc = StackProcess(
        tmp_path_factory.mktemp("webhook-stack") / "data",
        webhook_secret=SHARED,
        extra_args=["--reconcile-interval", "0"],
    )
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def stubs(
    stack: StackProcess,
) -> Iterator[tuple[transfer_pb2_grpc.TransferServiceStub, gateway_pb2_grpc.GatewayServiceStub]]:
    channel = grpc.insecure_channel(stack.grpc_address)
    yield (
        transfer_pb2_grpc.TransferServiceStub(channel),
        gateway_pb2_grpc.GatewayServiceStub(channel),
    )
    channel.close()


def notification(url: str, token: str) -> dict[str, Any]:
    """A registry `notifications.endpoints` entry as gateway/README.md documents it."""
    return {
        "name": "mirror-gateway",
        "url": url,
        "headers": {"Authorization": [f"Bearer {token}"]},
        "timeout": "2s",
        "threshold": 5,
        "backoff": "1s",
        "ignore": IGNORE,
    }


def add_endpoint(
    transfer: transfer_pb2_grpc.TransferServiceStub,
    name: str,
    reg: RegistryProcess,
    webhook_secret: str = "",
) -> None:
    transfer.CreateEndpoint(
        transfer_pb2.CreateEndpointRequest(
            endpoint=transfer_pb2.Endpoint(name=name, url=reg.url, webhook_secret=webhook_secret)
        ),
        timeout=30,
    )


def as_localhost(reg: RegistryProcess) -> Any:
    """The same registry named `localhost:PORT` (what a developer may type) for skopeo."""
    return types.SimpleNamespace(host=f"localhost:{reg.port}", skopeo_flags=reg.skopeo_flags)


def inbox_rows(stack: StackProcess, repository: str) -> list[dict[str, Any]]:
    """The stack's inbox rows for a repository (read-only: the stack owns the file)."""
    con = sqlite3.connect(f"file:{stack.data_dir / 'gateway.db'}?mode=ro", uri=True, timeout=10)
    con.row_factory = sqlite3.Row
    try:
        rows = con.execute(
            "SELECT id, endpoint, state, message, tag FROM events WHERE repository = ?",
            (repository,),
        ).fetchall()
    finally:
        con.close()
    return [dict(r) for r in rows]


def rejected_count(stack: StackProcess, reason: str) -> float:
    with urllib.request.urlopen(f"{stack.http_base}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "mirror_events_rejected_total" and s.labels.get("reason") == reason:
                return float(s.value)
    return 0.0


def unplaced(
    gateway: gateway_pb2_grpc.GatewayServiceStub, repository: str
) -> list[gateway_pb2.UnplacedEvent]:
    resp = gateway.ListUnplacedEvents(gateway_pb2.ListUnplacedEventsRequest(), timeout=10)
    return [e for e in resp.events if e.repository == repository]


def test_endpoint_token_places_events_at_its_endpoint_without_host_guessing(
    stack: StackProcess, stubs: Any, registry_factory: RegistryFactory, images: ImageBuilder
) -> None:
    transfer, gateway = stubs
    token = "tok-dev-webhook-token-0123456789"
    reg = registry_factory(notifications=[notification(f"{stack.http_base}/events/tokdev", token)])
    add_endpoint(transfer, "tokdev", reg, webhook_secret=token)
    # Pushed as localhost:PORT: by its hosts the event names no endpoint (the URL says
    # 127.0.0.1), so only the authenticated path can have placed it.
    push(images.image("1.0"), as_localhost(reg), "team/tokened", "1.0")
    rows = wait_for(
        lambda: [r for r in inbox_rows(stack, "team/tokened") if r["state"] != "pending"],
        60,
        "the push event to be acted on",
    )
    assert [(r["endpoint"], r["state"], r["tag"]) for r in rows] == [("tokdev", "done", "1.0")]
    assert unplaced(gateway, "team/tokened") == []


def test_wrong_token_and_unknown_endpoint_are_refused(
    stack: StackProcess, stubs: Any, registry_factory: RegistryFactory, images: ImageBuilder
) -> None:
    transfer, _ = stubs
    wrong = "not-the-webhook-token-0123456789"
    reg = registry_factory(
        notifications=[notification(f"{stack.http_base}/events/tokwrong", wrong)]
    )
    add_endpoint(transfer, "tokwrong", reg, webhook_secret="the-real-webhook-token-0123456789")
    before = rejected_count(stack, "unauthorized")
    push(images.image("1.0"), reg, "team/wrongtoken", "1.0")
    # The registry delivers (and keeps retrying) its event; every attempt is a 401.
    wait_for(lambda: rejected_count(stack, "unauthorized") > before, 60, "a refused delivery")
    assert inbox_rows(stack, "team/wrongtoken") == []

    ev = push_event("forged-1", reg, "team/wrongtoken", "9.9", "sha256:" + "1" * 64, OCI)
    status, doc = post_events(f"{stack.http_base}/events/tokwrong", {"events": [ev]}, wrong)
    assert status == 401 and doc["reason"] == "unauthorized"
    assert wrong not in str(doc)
    status, doc = post_events(f"{stack.http_base}/events/nosuch", {"events": [ev]}, wrong)
    assert status == 404 and doc["reason"] == "unknown_endpoint"
    # The shared secret is not an endpoint's token either.
    status, _ = post_events(f"{stack.http_base}/events/tokwrong", {"events": [ev]}, SHARED)
    assert status == 401
    assert inbox_rows(stack, "team/wrongtoken") == []


def test_shared_path_events_claiming_an_endpoint_with_a_secret_are_refused(
    stack: StackProcess, stubs: Any, registry_factory: RegistryFactory, images: ImageBuilder
) -> None:
    transfer, _ = stubs
    # This registry still posts to the shared path with the shared secret, as anyone holding
    # that secret could: its endpoint has a webhook secret, so nothing it claims is taken.
    reg = registry_factory(notifications=[notification(stack.webhook_url, SHARED)])
    add_endpoint(transfer, "tokforged", reg, webhook_secret="forged-endpoint-token-0123456789")
    push(images.image("1.0"), reg, "team/forged", "1.0")
    rows = wait_for(lambda: inbox_rows(stack, "team/forged"), 60, "the refusal to be recorded")
    assert {r["state"] for r in rows} == {"refused"}
    assert all(r["id"].startswith("refused/") for r in rows)
    assert "/events/tokforged" in rows[0]["message"]

    ev = push_event("forged-2", reg, "team/forged", "9.9-stable", "sha256:" + "2" * 64, OCI)
    status, doc = post_events(stack.webhook_url, {"events": [ev]}, SHARED)
    assert status == 403 and doc["reason"] == "needs_endpoint_token"
    assert SHARED not in str(doc)
    assert {r["state"] for r in inbox_rows(stack, "team/forged")} == {"refused"}


def test_hostile_bodies_get_400_and_the_gateway_stays_up(stack: StackProcess) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    status, doc = post_events(stack.webhook_url, deep, SHARED)
    assert status == 400 and "nested too deeply" in doc["error"]
    status, doc = post_events(
        stack.webhook_url, b'{"events": [{"id": ' + b"9" * 5000 + b"}]}", SHARED
    )
    assert status == 400 and doc["reason"] == "malformed"
    status, _ = post_events(stack.webhook_url, b"\xff\xfe not json", SHARED)
    assert status == 400
    with urllib.request.urlopen(f"{stack.http_base}/healthz", timeout=5) as resp:
        assert resp.status == 200


def test_unplaced_push_to_localhost_suggests_the_alias_that_places_it(
    stack: StackProcess, stubs: Any, registry_factory: RegistryFactory, images: ImageBuilder
) -> None:
    transfer, gateway = stubs
    reg = registry_factory(notifications=[notification(stack.webhook_url, SHARED)])
    add_endpoint(transfer, "plain", reg)  # http://127.0.0.1:PORT
    push(images.image("2.0"), as_localhost(reg), "team/unplaced", "2.0")
    (group,) = wait_for(lambda: unplaced(gateway, "team/unplaced"), 60, "the unplaced event")
    alias = f"localhost:{reg.port}"
    assert list(group.hosts) == [alias]
    assert (group.tag, group.count) == ("2.0", 1)
    assert (group.suggested_endpoint, group.suggested_alias) == ("plain", alias)
    assert group.last_time.seconds > 0

    # Following the suggestion places the next push (and the group is no longer listed).
    transfer.UpdateEndpoint(
        transfer_pb2.UpdateEndpointRequest(
            endpoint=transfer_pb2.Endpoint(name="plain", aliases=[alias]),
            update_mask=field_mask_pb2.FieldMask(paths=["aliases"]),
        ),
        timeout=30,
    )
    wait_for(lambda: not unplaced(gateway, "team/unplaced"), 30, "the group to be placed")
    push(images.image("2.1"), as_localhost(reg), "team/unplaced", "2.1")
    rows = wait_for(
        lambda: [
            r
            for r in inbox_rows(stack, "team/unplaced")
            if r["tag"] == "2.1" and r["state"] != "pending"
        ],
        60,
        "the second push to be acted on",
    )
    assert [(r["state"], r["endpoint"]) for r in rows] == [("done", "")]
