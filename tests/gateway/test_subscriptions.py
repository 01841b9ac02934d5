"""Subscriptions and signed deliveries against a real aiohttp receiver that checks the
signature with its own HMAC code (not the gateway's)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.fernet import Fernet
from mirror.v1 import gateway_pb2

from gateway.deliveries import DeliveryWorker
from gateway.notify import Notifier
from gateway.runs import RunRecord
from gateway.schema import open_database
from gateway.subscriptions import SubscriptionStore
from servicekit import metrics
from servicekit.errors import ApiError
from transfer_service.secrets import SecretBox

Run = gateway_pb2.Run
Delivery = gateway_pb2.Delivery
ET = gateway_pb2.EventType
TOLERANCE_S = 300


def verify(secret: str, headers: dict[str, str], body: bytes, now: float) -> bool:
    """A subscriber's check, written from docs/events.md alone."""
    ts = headers.get("X-Mirror-Timestamp", "")
    sig = headers.get("X-Mirror-Signature", "")
    if not ts.isdigit() or abs(now - int(ts)) > TOLERANCE_S or not sig.startswith("sha256="):
        return False
    want = hmac.new(secret.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(want, sig.removeprefix("sha256="))


@dataclass
class Receiver:
    """Answers each POST with the next status of `script` (then 204) and keeps what came."""

    secret: str = ""
    script: list[int] = field(default_factory=list)
    got: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    accepted: list[dict[str, object]] = field(default_factory=list)
    calls: int = 0
    server: TestServer | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.calls += 1
        body = await request.read()
        headers = dict(request.headers)
        self.got.append((headers, body))
        if self.script:
            return web.Response(status=self.script.pop(0))
        if self.secret and not verify(self.secret, headers, body, time.time()):
            return web.Response(status=401, text="bad signature")
        self.accepted.append(json.loads(body))
        return web.Response(status=204)

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("/hook"))


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    app = web.Application()
    app.router.add_post("/hook", r.handle)
    r.server = TestServer(app)
    await r.server.start_server()
    yield r
    await r.server.close()


def run(
    policy_id: str = "pol-1",
    state: int = Run.STATE_SUCCEEDED,
    trigger: int = Run.TRIGGER_EVENT,
    action: int = Run.ACTION_COPY,
    run_id: str = "run-1",
) -> RunRecord:
    now = time.time()
    rec = RunRecord(
        id=run_id, policy_id=policy_id, policy_name="website-to-qa", event_id="ev",
        trigger=trigger, src_endpoint="dev", src_repository="dev/website", src_tag="1.0",
        src_digest="sha256:" + "c" * 64, dst_endpoint="qa", dst_repository="qa/website",
        dst_tag="1.0", state=state, message="mirrored", transfer_id="t-1",
        create_time=now, update_time=now, end_time=now,
    )
    rec.action = action
    return rec


def new_sub(url: str, **kw: object) -> gateway_pb2.Subscription:
    return gateway_pb2.Subscription(url=url, **kw)  # type: ignore[arg-type]


@pytest.fixture
def box() -> SecretBox:
    return SecretBox([Fernet.generate_key()])


@pytest.fixture
async def notifier(tmp_path: Path, db_target: str, box: SecretBox) -> AsyncIterator[Notifier]:
    n = Notifier(db=open_database(tmp_path, db_target), cipher=box, base_delay_s=0.01, attempts=3)
    await n.start()
    yield n
    await n.stop()
    n.db.close()


def _metric(outcome: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "mirror_event_deliveries_total", {"outcome": outcome}
    )
    return value or 0.0


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def drained(n: Notifier) -> None:
    await asyncio.wait_for(n.drain(), 10)


async def test_signed_event_verifies_and_a_tampered_body_does_not(
    notifier: Notifier, receiver: Receiver
) -> None:
    created = notifier.store.create(new_sub(receiver.url))
    assert created.has_secret and len(created.secret) >= 32  # made here, shown once
    receiver.secret = created.secret
    await notifier.send(run())
    await drained(notifier)
    (doc,) = receiver.accepted
    (headers, body), = receiver.got
    assert doc["type"] == "PUSH_MIRRORING" and doc["run_id"] == "run-1"
    assert headers["X-Mirror-Event-Id"] == doc["id"] and headers["X-Mirror-Event"] == (
        "PUSH_MIRRORING"
    )
    assert headers["Content-Type"] == "application/json"
    now = time.time()
    assert verify(created.secret, headers, body, now)
    tampered = body.replace(b'"SUCCEEDED"', b'"FAILED"')
    assert tampered != body and not verify(created.secret, headers, tampered, now)
    # The timestamp is signed: moving it (to replay an old event as new) breaks the signature.
    moved = dict(headers, **{"X-Mirror-Timestamp": str(int(headers["X-Mirror-Timestamp"]) + 1)})
    assert not verify(created.secret, moved, body, now)
    assert not verify(created.secret, headers, body, now + TOLERANCE_S + 10)  # stale
    assert not verify("another-secret-0123456789", headers, body, now)
    (d,) = notifier.store.deliveries(created.id, 0, "")[0]
    assert (d.state, d.attempts, d.response_code) == (Delivery.STATE_DELIVERED, 1, 204)


async def test_secret_never_read_back_and_never_logged(
    notifier: Notifier, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "subscriber-chosen-secret-0123456789"
    caplog.set_level(logging.DEBUG)
    created = notifier.store.create(new_sub(receiver.url, secret=secret))
    assert created.secret == "" and created.has_secret  # given by the caller: not echoed
    got = notifier.store.get(created.id).to_proto()
    (listed,), _ = notifier.store.page(0, "")
    assert got.secret == "" and listed.to_proto().secret == "" and got.has_secret
    receiver.script = [500, 500, 500]
    await notifier.send(run())
    await drained(notifier)
    row = notifier.db.query_one("SELECT secret FROM subscriptions WHERE id = ?", (created.id,))
    assert row is not None and secret.encode() not in bytes(row["secret"])  # encrypted at rest
    assert secret not in caplog.text and "given up after 3 attempts" in caplog.text


async def test_500_then_200_is_delivered_on_retry(
    notifier: Notifier, receiver: Receiver
) -> None:
    created = notifier.store.create(new_sub(receiver.url))
    receiver.secret, receiver.script = created.secret, [500]
    before = {o: _metric(o) for o in ("delivered", "retried", "failed")}
    await notifier.send(run())
    await drained(notifier)
    assert receiver.calls == 2 and len(receiver.accepted) == 1
    assert {o: _metric(o) - before[o] for o in before} == {
        "delivered": 1, "retried": 1, "failed": 0
    }
    (d,) = notifier.store.deliveries(created.id, 0, "")[0]
    assert (d.state, d.attempts, d.response_code) == (Delivery.STATE_DELIVERED, 2, 204)
    # Each attempt is signed afresh; the event id stays the same (receivers dedupe on it).
    (h1, b1), (h2, b2) = receiver.got
    assert b1 == b2 and h1["X-Mirror-Event-Id"] == h2["X-Mirror-Event-Id"]


async def test_gives_up_after_n_attempts_and_at_once_on_a_refusal(
    notifier: Notifier, receiver: Receiver
) -> None:
    sub = notifier.store.create(new_sub(receiver.url))
    receiver.script = [503, 503, 503, 503]
    await notifier.send(run(run_id="r-busy"))
    await drained(notifier)
    assert receiver.calls == 3  # attempts=3, never more
    receiver.script = [404]
    await notifier.send(run(run_id="r-gone"))
    await drained(notifier)
    assert receiver.calls == 4
    log = {d.run_id: d for d in notifier.store.deliveries(sub.id, 0, "")[0]}
    busy, gone = log["r-busy"], log["r-gone"]
    assert (busy.state, busy.attempts, busy.response_code) == (Delivery.STATE_FAILED, 3, 503)
    assert busy.message == "given up after 3 attempts: HTTP 503"
    assert (gone.state, gone.attempts) == (Delivery.STATE_FAILED, 1)
    assert gone.message == "not retried: HTTP 404"
    assert notifier.failed == 2 and notifier.delivered == 0


async def test_filters_by_event_type_and_policy(notifier: Notifier, receiver: Receiver) -> None:
    store = notifier.store
    every = store.create(new_sub(receiver.url))
    deletions = store.create(new_sub(receiver.url, event_types=[ET.EVENT_TYPE_TAG_DELETION]))
    polls_of_p2 = store.create(
        new_sub(receiver.url, event_types=[ET.EVENT_TYPE_POLL_MIRRORING], policy_id="p2")
    )
    only_p1 = store.create(new_sub(receiver.url, policy_id="p1"))
    await notifier.send(run("p1", run_id="push-p1"))
    await notifier.send(run("p2", trigger=Run.TRIGGER_SCHEDULE, run_id="poll-p2"))
    await notifier.send(run("p1", trigger=Run.TRIGGER_SCHEDULE, run_id="poll-p1"))
    await notifier.send(run("p2", action=Run.ACTION_DELETE_DRY_RUN, run_id="del-p2"))
    await notifier.send(run("p1", state=Run.STATE_BLOCKED, run_id="blocked-p1"))
    # Nothing happened: no event.
    await notifier.send(run("p1", state=Run.STATE_NOT_MATCHED, run_id="nm"))
    await notifier.send(run("p1", state=Run.STATE_SKIPPED, run_id="skip"))
    await drained(notifier)

    def runs_of(sub: gateway_pb2.Subscription) -> set[str]:
        return {d.run_id for d in store.deliveries(sub.id, 0, "")[0]}

    assert runs_of(every) == {"push-p1", "poll-p2", "poll-p1", "del-p2", "blocked-p1"}
    assert runs_of(deletions) == {"del-p2"}
    assert runs_of(polls_of_p2) == {"poll-p2"}
    assert runs_of(only_p1) == {"push-p1", "poll-p1", "blocked-p1"}
    types = {d["run_id"]: d["type"] for d in receiver.accepted}
    assert types["poll-p2"] == "POLL_MIRRORING" and types["del-p2"] == "TAG_DELETION"
    assert types["push-p1"] == "PUSH_MIRRORING"
    assert {d["action"] for d in receiver.accepted if d["run_id"] == "del-p2"} == {
        "DELETE_DRY_RUN"
    }


async def test_pending_deliveries_survive_a_restart(
    tmp_path: Path, db_target: str, box: SecretBox, receiver: Receiver
) -> None:
    db = open_database(tmp_path, db_target)
    first = Notifier(db=db, cipher=box)
    sub = first.store.create(new_sub(receiver.url))
    receiver.secret = sub.secret
    await first.send(run())  # recorded, never sent: the worker was not started (a crash)
    await first.stop()
    db.close()
    assert receiver.calls == 0

    db = open_database(tmp_path, db_target)
    again = Notifier(db=db, cipher=box)
    await again.start()
    try:
        await drained(again)
    finally:
        await again.stop()
        db.close()
    assert len(receiver.accepted) == 1 and receiver.accepted[0]["run_id"] == "run-1"


async def test_max_age_gives_up_with_a_message(
    tmp_path: Path, db_target: str, box: SecretBox, receiver: Receiver
) -> None:
    db = open_database(tmp_path, db_target)
    store = SubscriptionStore(db, box)
    sub = store.create(new_sub(receiver.url))
    store.enqueue(ET.EVENT_TYPE_PUSH_MIRRORING, "p", "old-run", {"id": "e1"})
    clock_offset = [0.0]
    worker = DeliveryWorker(
        store, max_age_s=60, base_delay_s=0.01, clock=lambda: time.time() + clock_offset[0]
    )
    receiver.script = [503] * 100
    await worker.start()
    try:
        await until(lambda: receiver.calls >= 1)
        clock_offset[0] = 3600.0  # an hour later: past the maximum age
        await asyncio.wait_for(worker.drain(), 10)
    finally:
        await worker.stop()
    (d,) = store.deliveries(sub.id, 0, "")[0]
    assert d.state == Delivery.STATE_FAILED
    assert d.message.startswith("given up: older than the maximum age (last attempt:")
    db.close()


async def test_bounded_queue_still_sends_every_delivery(
    tmp_path: Path, db_target: str, box: SecretBox, receiver: Receiver
) -> None:
    db = open_database(tmp_path, db_target)
    store = SubscriptionStore(db, box)
    sub = store.create(new_sub(receiver.url))
    for i in range(25):
        store.enqueue(ET.EVENT_TYPE_PUSH_MIRRORING, "p", f"r{i}", {"id": f"e{i}"})
    worker = DeliveryWorker(store, queue_size=2, senders=2)
    await worker.start()
    try:
        await asyncio.wait_for(worker.drain(), 20)
    finally:
        await worker.stop()
    assert worker.delivered == 25 and receiver.calls == 25
    log, token = store.deliveries(sub.id, 10, "")
    assert len(log) == 10 and token
    rest, _ = store.deliveries(sub.id, 100, token)
    assert len(rest) == 15 and {d.run_id for d in log + rest} == {f"r{i}" for i in range(25)}
    db.close()


async def test_notify_urls_are_unsigned_subscriptions_kept_in_step_with_the_flag(
    tmp_path: Path, db_target: str, box: SecretBox, receiver: Receiver
) -> None:
    db = open_database(tmp_path, db_target)
    n = Notifier([receiver.url], db=db, cipher=box)
    await n.sync_urls()  # at start
    (flag,) = n.store.all()
    assert flag.origin == "flag" and not flag.has_secret and flag.event_types == ()
    with pytest.raises(ApiError) as err:
        n.store.delete(flag.id)
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
    await n.start()
    try:
        await n.send(run())
        await drained(n)
    finally:
        await n.stop()
    (headers, _), = receiver.got
    assert "X-Mirror-Signature" not in headers and headers["X-Mirror-Timestamp"].isdigit()
    # Restarted without the flag: the subscription (and its log) is gone.
    again = Notifier([receiver.url], db=db)
    await again.sync_urls()
    assert [s.id for s in again.store.all()] == [flag.id]
    gone = Notifier([], db=db)
    await gone.sync_urls()
    assert gone.store.all() == []
    db.close()


@pytest.mark.parametrize(
    ("sub", "field_name"),
    [
        (gateway_pb2.Subscription(url=""), "subscription.url"),
        (gateway_pb2.Subscription(url="ftp://x/"), "subscription.url"),
        (gateway_pb2.Subscription(url="https://u:p@hooks.example/"), "subscription.url"),
        (gateway_pb2.Subscription(url="https://h/", secret="short"), "subscription.secret"),
        (gateway_pb2.Subscription(url="https://h/", event_types=[9]), "subscription.event_types"),  # type: ignore[list-item]
        (gateway_pb2.Subscription(url="https://h/", id="mine"), "subscription.id"),
    ],
)
def test_invalid_subscriptions_are_refused(
    tmp_path: Path, db_target: str, box: SecretBox, sub: gateway_pb2.Subscription, field_name: str
) -> None:
    db = open_database(tmp_path, db_target)
    store = SubscriptionStore(db, box)
    with pytest.raises(ApiError) as err:
        store.create(sub)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in err.value.field_violations] == [field_name]
    assert "u:p" not in str(err.value.field_violations) and "short" not in str(
        err.value.field_violations
    )
    db.close()


async def test_deleting_a_subscription_drops_its_log_and_pending_deliveries(
    tmp_path: Path, db_target: str, box: SecretBox
) -> None:
    db = open_database(tmp_path, db_target)
    store = SubscriptionStore(db, box)
    sub = store.create(new_sub("http://127.0.0.1:9/hook"))
    store.enqueue(ET.EVENT_TYPE_PUSH_MIRRORING, "p", "r", {"id": "e"})
    assert store.pending_count() == 1
    store.delete(sub.id)
    assert store.pending_count() == 0
    for call in (lambda: store.get(sub.id), lambda: store.deliveries(sub.id, 0, "")):
        with pytest.raises(ApiError) as err:
            call()
        assert err.value.code == grpc.StatusCode.NOT_FOUND
    db.close()




async def test_a_secret_the_key_cannot_decrypt_fails_once_not_in_a_loop(
    tmp_path: Path, db_target: str, box: SecretBox, receiver: Receiver
) -> None:
    db = open_database(tmp_path, db_target)
    sub = SubscriptionStore(db, box).create(new_sub(receiver.url))
    other_key = SubscriptionStore(db, SecretBox([Fernet.generate_key()]))
    other_key.enqueue(ET.EVENT_TYPE_PUSH_MIRRORING, "p", "r", {"id": "e"})
    worker = DeliveryWorker(other_key, base_delay_s=0.01)
    await worker.start()
    try:
        await asyncio.wait_for(worker.drain(), 10)
    finally:
        await worker.stop()
    (d,) = other_key.deliveries(sub.id, 0, "")[0]
    assert receiver.calls == 0 and (d.state, d.attempts) == (Delivery.STATE_FAILED, 1)
    assert d.message.startswith("not retried: SecretKeyError: a stored secret cannot be")
    db.close()


async def test_an_unreachable_receiver_is_retried_then_given_up(
    tmp_path: Path, db_target: str, box: SecretBox
) -> None:
    from registry_testkit.ports import free_port

    db = open_database(tmp_path, db_target)
    store = SubscriptionStore(db, box)
    sub = store.create(new_sub(f"http://127.0.0.1:{free_port()}/hook"))  # nothing listens
    store.enqueue(ET.EVENT_TYPE_PUSH_MIRRORING, "p", "r", {"id": "e"})
    worker = DeliveryWorker(store, attempts=2, base_delay_s=0.01)
    await worker.start()
    try:
        await asyncio.wait_for(worker.drain(), 10)
    finally:
        await worker.stop()
    (d,) = store.deliveries(sub.id, 0, "")[0]
    assert (d.state, d.attempts, d.response_code) == (Delivery.STATE_FAILED, 2, 0)
    assert d.message.startswith("given up after 2 attempts: ClientConnectorError")
    db.close()


@pytest.mark.parametrize(
    ("url", "why"),
    [("ftp://hooks.example/", "http:// or https://"), ("https://u:pw@hooks.example/", "user:")],
)
def test_unusable_notify_urls_are_refused_at_start(
    url: str, why: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import argparse

    from gateway.options import add_gateway_arguments

    p = argparse.ArgumentParser(prog="gateway")
    add_gateway_arguments(p, "127.0.0.1:0")
    assert p.parse_args(["--notify-url", "http://127.0.0.1:9/h"]).notify_url == [
        "http://127.0.0.1:9/h"
    ]
    with pytest.raises(SystemExit):
        p.parse_args(["--notify-url", url])
    err = capsys.readouterr().err
    assert "--notify-url" in err and why in err and "pw" not in err
