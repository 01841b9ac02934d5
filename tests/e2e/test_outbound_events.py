"""Outbound events through the stack (issue 12): subscriptions made over gRPC receive signed
events of real mirror runs; the receiver checks signatures with its own HMAC code."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiohttp import web
from google.protobuf.duration_pb2 import Duration
from mirror.v1 import common_pb2, gateway_pb2, policy_pb2

from registry_testkit.images import ImageBuilder, push
from registry_testkit.ports import free_port
from stack.process import StackProcess
from tests.e2e.conftest import WEBHOOK_SECRET, Clients, notify_config, wait_for
from tests.e2e.helpers import tags_of
from tests.support.registry import RegistryFactory

pytestmark = pytest.mark.registry

Delivery = gateway_pb2.Delivery
ET = gateway_pb2.EventType
TOLERANCE_S = 300


@dataclass
class Hook:
    """One receiving path: its secret, scripted statuses, and what it accepted."""

    secret: str = ""
    script: list[int] = field(default_factory=list)
    accepted: list[dict[str, Any]] = field(default_factory=list)
    raw: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    seen_ids: set[str] = field(default_factory=set)
    calls: int = 0


def verify(secret: str, headers: Mapping[str, str], body: bytes, now: float) -> str:
    """'' when the request is authentic and fresh, else why not (the docs' recipe)."""
    ts = headers.get("X-Mirror-Timestamp", "")
    sig = headers.get("X-Mirror-Signature", "")
    if not ts.isdigit() or abs(now - int(ts)) > TOLERANCE_S:
        return "stale or missing timestamp"
    want = hmac.new(secret.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest("sha256=" + want, sig):
        return "bad signature"
    return ""


class Receiver:
    """An aiohttp server of the test's own on its own loop in a thread."""

    def __init__(self) -> None:
        self.port = free_port()
        self.hooks: dict[str, Hook] = {}
        self.lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(
            target=self._loop.run_until_complete, args=(self._serve(),), daemon=True
        )

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def hook(self, name: str, **kw: Any) -> Hook:
        self.hooks[name] = Hook(**kw)
        return self.hooks[name]

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = dict(request.headers)
        with self.lock:
            h = self.hooks[request.match_info["name"]]
            h.calls += 1
            h.raw.append((headers, body))
            if h.script:
                return web.Response(status=h.script.pop(0))
            if h.secret:
                why = verify(h.secret, request.headers, body, time.time())
                if why:
                    h.refused.append(why)
                    return web.Response(status=401, text=why)
            event_id = request.headers.get("X-Mirror-Event-Id", "")
            if event_id in h.seen_ids:
                h.refused.append("replayed")
                return web.Response(status=200, text="already had it")  # dedupe: ack, ignore
            h.seen_ids.add(event_id)
            h.accepted.append(json.loads(body))
        return web.Response(status=204)

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_post("/{name}", self._handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def start(self) -> Receiver:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("event receiver did not start")
        return self

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


def post(url: str, headers: dict[str, str], body: bytes) -> int:
    keep = {k: v for k, v in headers.items() if k.lower().startswith("x-mirror-")}
    req = urllib.request.Request(
        url, data=body, method="POST", headers={**keep, "Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def subscribe(c: Clients, url: str, **kw: Any) -> gateway_pb2.Subscription:
    return c.gateway.CreateSubscription(
        gateway_pb2.CreateSubscriptionRequest(subscription=gateway_pb2.Subscription(url=url, **kw)),
        timeout=10,
    )


def deliveries(c: Clients, sub_id: str) -> list[gateway_pb2.Delivery]:
    return list(
        c.gateway.ListDeliveries(
            gateway_pb2.ListDeliveriesRequest(subscription_id=sub_id, page_size=100), timeout=10
        ).deliveries
    )


def settled(c: Clients, sub_id: str, count: int) -> list[gateway_pb2.Delivery] | None:
    log = deliveries(c, sub_id)
    done = [d for d in log if d.state != Delivery.STATE_PENDING]
    return log if len(log) >= count and len(done) == len(log) else None


def test_signed_events_filters_retries_and_the_delivery_log(
    stack: StackProcess,
    clients: Clients,
    receiver: Receiver,
    registry_factory: RegistryFactory,
    tmp_path: Path,
) -> None:
    c = clients
    dev = registry_factory(notifications=[notify_config(stack)])
    qa = registry_factory()
    c.add_endpoint("dev", dev)
    c.add_endpoint("qa", qa)
    ok = c.add_policy("ok", "dev/website", 'tag endswith "stable"', "qa", "qa/website")
    other = c.add_policy("other", "dev/website", 'tag endswith "stable"', "qa", "qa/other")
    c.add_policy("never", "dev/website", 'tag == "nope"', "qa", "qa/never")

    everything = subscribe(c, receiver.url("all"))  # secret made by the server
    chosen = "receiver-chosen-secret-0123456789"
    only_ok = subscribe(
        c, receiver.url("ok"), policy_id=ok.id, secret=chosen,
        event_types=[ET.EVENT_TYPE_PUSH_MIRRORING],
    )
    deletions = subscribe(c, receiver.url("del"), event_types=[ET.EVENT_TYPE_TAG_DELETION])
    refusing = subscribe(c, receiver.url("gone"))
    assert everything.secret and everything.has_secret  # returned once, here
    assert only_ok.secret == "" and only_ok.has_secret  # the caller's own: never echoed
    receiver.hook("all", secret=everything.secret, script=[500])  # 500 first, then 204
    receiver.hook("ok", secret=chosen)
    receiver.hook("del", secret=deletions.secret)
    receiver.hook("gone", script=[410] * 10)

    # Never read back: Get and List carry has_secret only.
    got = c.gateway.GetSubscription(gateway_pb2.GetSubscriptionRequest(id=everything.id))
    listed = c.gateway.ListSubscriptions(gateway_pb2.ListSubscriptionsRequest()).subscriptions
    assert got.secret == "" and got.has_secret and got.url == receiver.url("all")
    assert {s.id for s in listed} == {everything.id, only_ok.id, deletions.id, refusing.id}
    assert all(s.secret == "" and s.has_secret for s in listed)
    assert list(got.event_types) == [] and got.policy_id == ""

    img = ImageBuilder(tmp_path / "img").image("3.0-stable")
    push(img, dev, "dev/website")
    (ok_run,) = c.wait_runs_final(ok.id, 1)
    (other_run,) = c.wait_runs_final(other.id, 1)

    log_all = wait_for(lambda: settled(c, everything.id, 2), 60, "deliveries to /all")
    log_ok = wait_for(lambda: settled(c, only_ok.id, 1), 60, "the delivery to /ok")
    log_gone = wait_for(lambda: settled(c, refusing.id, 2), 60, "deliveries to /gone")

    # /all got both runs' events, verified by its own HMAC; one needed a retry after the 500.
    hall = receiver.hooks["all"]
    assert {e["run_id"] for e in hall.accepted} == {ok_run.id, other_run.id}
    assert all(e["type"] == "PUSH_MIRRORING" and e["state"] == "SUCCEEDED" for e in hall.accepted)
    assert all(d.state == Delivery.STATE_DELIVERED for d in log_all)
    assert sorted(d.attempts for d in log_all) == [1, 2] and hall.calls == 3
    assert {d.run_id for d in log_all} == {ok_run.id, other_run.id}
    assert all(d.event_type == ET.EVENT_TYPE_PUSH_MIRRORING for d in log_all)
    assert all(d.response_code == 204 and d.HasField("last_attempt_time") for d in log_all)
    # The policy filter: /ok got the "ok" policy's event only; no deletion happened.
    assert [e["run_id"] for e in receiver.hooks["ok"].accepted] == [ok_run.id]
    assert [d.run_id for d in log_ok] == [ok_run.id]
    assert deliveries(c, deletions.id) == [] and receiver.hooks["del"].calls == 0
    # A refusal is not retried; the log says so.
    assert all(d.state == Delivery.STATE_FAILED and d.attempts == 1 for d in log_gone)
    assert all(d.response_code == 410 and d.message == "not retried: HTTP 410" for d in log_gone)

    event = next(e for e in hall.accepted if e["run_id"] == ok_run.id)
    assert event["policy"] == {"id": ok.id, "name": "ok"} and event["digest"] == img.digest
    assert event["destination"] == {"endpoint": "qa", "repository": "qa/website",
                                    "tag": "3.0-stable"}
    assert event["trigger"] == "EVENT" and event["action"] == "COPY"

    # A tampered body (or a moved timestamp) fails the receiver's check; a replay of the
    # genuine request is recognised by its event id.
    headers, body = next(r for r in hall.raw if json.loads(r[1])["run_id"] == ok_run.id
                         and "X-Mirror-Signature" in r[0])
    assert verify(everything.secret, headers, body, time.time()) == ""
    tampered = body.replace(b'"qa/website"', b'"qa/evil"')
    assert tampered != body
    assert post(receiver.url("all"), headers, tampered) == 401
    later = dict(headers, **{"X-Mirror-Timestamp": str(int(time.time()) + 60)})
    assert post(receiver.url("all"), later, body) == 401
    assert hall.refused == ["bad signature", "bad signature"]
    assert post(receiver.url("all"), headers, body) == 200 and hall.refused[-1] == "replayed"

    # Secrets never in the stack's log; a deleted subscription is gone with its log.
    text = stack.log_path.read_text(errors="replace")
    assert everything.secret not in text and chosen not in text and deletions.secret not in text
    c.gateway.DeleteSubscription(gateway_pb2.DeleteSubscriptionRequest(id=refusing.id))
    with pytest.raises(grpc.RpcError) as err:
        c.gateway.ListDeliveries(gateway_pb2.ListDeliveriesRequest(subscription_id=refusing.id))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_refusals_of_bad_subscriptions(stack: StackProcess, clients: Clients) -> None:
    for sub, code in [
        (gateway_pb2.Subscription(url="ftp://example/"), grpc.StatusCode.INVALID_ARGUMENT),
        (gateway_pb2.Subscription(url="http://127.0.0.1:9/", policy_id="no-such-policy"),
         grpc.StatusCode.NOT_FOUND),
    ]:
        with pytest.raises(grpc.RpcError) as err:
            clients.gateway.CreateSubscription(
                gateway_pb2.CreateSubscriptionRequest(subscription=sub), timeout=10
            )
        assert err.value.code() == code
    with pytest.raises(grpc.RpcError) as err:
        clients.gateway.GetSubscription(gateway_pb2.GetSubscriptionRequest(id="nope"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_pending_delivery_survives_a_restart(
    receiver: Receiver, registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    stack = StackProcess(
        tmp_path / "data", webhook_secret=WEBHOOK_SECRET, extra_args=["--reconcile-interval", "0"]
    )
    stack.start()
    c = Clients(stack.grpc_address)
    try:
        dev = registry_factory(notifications=[notify_config(stack)])
        c.add_endpoint("dev", dev)
        c.add_endpoint("qa", registry_factory())
        pol = c.add_policy("ok", "dev/app", "true", "qa", "qa/app")
        sub = subscribe(c, receiver.url("down"))
        hook = receiver.hook("down", secret=sub.secret, script=[503] * 1000)
        push(ImageBuilder(tmp_path / "img").image("1.0"), dev, "dev/app")
        (run,) = c.wait_runs_final(pol.id, 1)
        (pending,) = wait_for(
            lambda: [d for d in deliveries(c, sub.id) if d.attempts >= 1], 60, "a refused attempt"
        )
        assert pending.state == Delivery.STATE_PENDING and pending.response_code == 503
        assert pending.message.startswith("attempt ") and pending.message.endswith("retrying")
        stack.stop()
        with receiver.lock:
            hook.script.clear()  # the receiver is back, the gateway is not
        c.close()
        stack.start()
        c = Clients(stack.grpc_address)
        (done,) = wait_for(lambda: settled(c, sub.id, 1), 60, "the delivery after the restart")
        assert done.state == Delivery.STATE_DELIVERED and done.run_id == run.id
        assert [e["run_id"] for e in hook.accepted] == [run.id]
    finally:
        c.close()
        stack.stop()


def test_poll_and_tag_deletion_events(
    stack: StackProcess,
    clients: Clients,
    receiver: Receiver,
    registry_factory: RegistryFactory,
    tmp_path: Path,
) -> None:
    """A pull mirror's runs are POLL_MIRRORING events; a tag gone upstream, deleted at the
    destination by the policy that wrote it, is a TAG_DELETION event."""
    c = clients
    upstream, local = registry_factory(), registry_factory()  # upstream sends no events
    c.add_endpoint("hub", upstream)
    c.add_endpoint("local", local)
    polls_sub = subscribe(c, receiver.url("polls"), event_types=[ET.EVENT_TYPE_POLL_MIRRORING])
    deletions_sub = subscribe(c, receiver.url("dels"), event_types=[ET.EVENT_TYPE_TAG_DELETION])
    receiver.hook("polls", secret=polls_sub.secret)
    receiver.hook("dels", secret=deletions_sub.secret)
    images = ImageBuilder(tmp_path / "img")
    one = push(images.image("1.0", layers=(1100,)), upstream, "lib/app")
    push(images.image("2.0", layers=(2100,)), upstream, "lib/app")
    pol = c.policy.CreatePolicy(
        policy_pb2.CreatePolicyRequest(
            policy=policy_pb2.Policy(
                name="pull-app",
                source=policy_pb2.PolicySource(endpoint="hub", repository="lib/app"),
                rule="true",
                target=common_pb2.Target(endpoint="local", repository="mirror/app"),
                tag_template="%n",
                enabled=True,
                trigger=policy_pb2.PolicyTrigger(
                    schedule=policy_pb2.ScheduleTrigger(interval=Duration(seconds=1))
                ),
                deletions=policy_pb2.DELETION_MODE_PROPAGATE,
            )
        ),
        timeout=60,
    )
    polled = wait_for(lambda: settled(c, polls_sub.id, 2), 60, "two poll events")
    assert {d.event_type for d in polled} == {ET.EVENT_TYPE_POLL_MIRRORING}
    events = receiver.hooks["polls"].accepted
    assert sorted(e["source"]["tag"] for e in events) == ["1.0", "2.0"]
    assert all(e["type"] == "POLL_MIRRORING" and e["trigger"] == "SCHEDULE" for e in events)
    assert all(e["poll_id"] and e["policy"]["id"] == pol.id for e in events)
    assert deliveries(c, deletions_sub.id) == []

    req = urllib.request.Request(
        f"{upstream.url}/v2/lib/app/manifests/{one}", method="DELETE"
    )
    with urllib.request.urlopen(req, timeout=10, context=upstream.ssl_context()) as resp:
        assert resp.status == 202
    wait_for(lambda: tags_of(local, "mirror/app") == ["2.0"], 60, "1.0 deleted downstream")
    (deleted,) = wait_for(lambda: settled(c, deletions_sub.id, 1), 60, "the deletion event")
    assert deleted.state == Delivery.STATE_DELIVERED
    assert deleted.event_type == ET.EVENT_TYPE_TAG_DELETION
    (event,) = receiver.hooks["dels"].accepted
    assert event["type"] == "TAG_DELETION" and event["action"] == "DELETE"
    assert event["destination"] == {"endpoint": "local", "repository": "mirror/app",
                                    "tag": "1.0"}
    assert event["state"] == "SUCCEEDED" and event["run_id"] == deleted.run_id
    # The deletion is not also a poll event.
    assert len(receiver.hooks["polls"].accepted) == 2
