"""`mirrorctl subscription ...` and the SDK's subscription methods against a live stack, with
a receiver of the test's own that checks each signature (real registries, skopeo)."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mirror import aio, client, errors
from mirror.v1 import gateway_pb2

from registry_testkit.images import ImageBuilder, push
from tests.clients.livestack import (
    ADMIN_TOKEN,
    READ_TOKEN,
    LiveStack,
    notification,
    running,
    start_stack,
    wait_for,
)
from tests.support.registry import RegistryFactory

ET = gateway_pb2.EventType


class Receiver(http.server.ThreadingHTTPServer):
    """Accepts POSTs whose X-Mirror-Signature verifies under `secret` (401 otherwise)."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.secret = ""
        self.accepted: list[dict[str, Any]] = []
        self.refused = 0
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        ts = self.headers.get("X-Mirror-Timestamp", "")
        sig = self.headers.get("X-Mirror-Signature", "")
        want = "sha256=" + hmac.new(
            self.server.secret.encode(), ts.encode() + b"." + body, hashlib.sha256
        ).hexdigest()
        fresh = ts.isdigit() and abs(time.time() - int(ts)) < 300
        if fresh and hmac.compare_digest(want, sig):
            self.server.accepted.append(json.loads(body))
            self.send_response(204)
        else:
            self.server.refused += 1
            self.send_response(401)
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.shutdown()
    r.server_close()


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveStack]:
    yield from running(start_stack(tmp_path))


def _ok(ls: LiveStack, *args: str, stdin: str | None = None) -> str:
    r = ls.ctl(*args, stdin=stdin)
    assert r.code == 0, f"{args}: {r.code}\n{r.stdout}\n{r.stderr}"
    return r.stdout


@pytest.mark.registry
def test_subscription_lifecycle_and_delivery_log(
    live: LiveStack, receiver: Receiver, registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    ls = live
    dev = registry_factory(notifications=[notification(ls.process)])
    qa = registry_factory()
    _ok(ls, "endpoint", "add", "dev", "--url", dev.url)
    _ok(ls, "endpoint", "add", "qa", "--url", qa.url)
    pol = ls.ctl("policy", "create", "--name", "promote", "--source", "dev/app", "--rule", "true",
                 "--target", "qa/app", "-o", "json")
    assert pol.code == 0, pol.stderr
    pol_id = pol.json()["id"]

    # A server-made secret: printed once, on stdout.
    out = _ok(ls, "subscription", "create", receiver.url, "--events", "push_mirroring",
              "--policy", "promote")
    (line,) = [x for x in out.splitlines() if x.startswith("secret: ")]
    receiver.secret = line.removeprefix("secret: ")
    assert len(receiver.secret) >= 32
    subs = json.loads(_ok(ls, "subscription", "list", "-o", "json"))
    (sub,) = subs
    assert "secret" not in sub and sub["has_secret"] is True
    assert sub["event_types"] == ["push_mirroring"] and sub["policy_id"] == pol_id
    shown = _ok(ls, "subscription", "get", sub["id"])
    assert "stored (never shown)" in shown and receiver.secret not in shown

    # A caller's secret from stdin is never printed back.
    chosen = "chosen-hook-secret-" + "5b8e0d2c71a9"
    made = ls.ctl("subscription", "create", "http://127.0.0.1:9/other", "--secret-stdin",
                  "-o", "json", stdin=chosen + "\n")
    assert made.code == 0 and "secret" not in made.json() and made.json()["has_secret"]
    # Read tokens may look, not change.
    r = ls.ctl("subscription", "list", token=READ_TOKEN)
    assert r.code == 0 and receiver.url in r.stdout
    r = ls.ctl("subscription", "create", receiver.url, token=READ_TOKEN)
    assert r.code == 1 and "admin token" in r.stderr

    push(ImageBuilder(tmp_path / "img").image("2.0"), dev, "app")  # policy source dev/app

    def delivered() -> list[dict[str, Any]] | None:
        log = json.loads(_ok(ls, "subscription", "deliveries", sub["id"], "-o", "json"))
        return log if log and log[0]["state"] == "delivered" else None

    (d,) = wait_for("the delivery", delivered)
    assert d["event_type"] == "push_mirroring" and d["attempts"] == 1
    assert d["response_code"] == 204
    (event,) = receiver.accepted
    assert event["run_id"] == d["run_id"] and event["policy"]["id"] == pol_id
    assert receiver.refused == 0
    table = _ok(ls, "subscription", "deliveries", sub["id"])
    assert "delivered" in table and d["run_id"] in table

    _ok(ls, "subscription", "delete", sub["id"])
    r = ls.ctl("subscription", "get", sub["id"])
    assert r.code == 3
    assert all(chosen not in o for o in ls.outputs) and chosen not in ls.log
    assert receiver.secret not in ls.log


def test_bad_event_type_is_a_usage_error(live: LiveStack) -> None:
    r = live.ctl("subscription", "create", "https://hooks.example/", "--events", "pushes")
    assert r.code == 2 and "push_mirroring" in r.stderr and "tag_deletion" in r.stderr
    r = live.ctl("subscription", "create", "ftp://hooks.example/")
    assert r.code == 4 and "subscription.url" in r.stderr


def test_sdk_sync_and_asyncio(live: LiveStack) -> None:
    with client.connect(live.address, token=ADMIN_TOKEN) as c:
        sub = c.gateway.create_subscription(
            url="https://hooks.example/a",
            event_types=["tag_deletion", ET.EVENT_TYPE_POLL_MIRRORING],
        )
        assert sub.secret and list(sub.event_types) == [
            ET.EVENT_TYPE_POLL_MIRRORING, ET.EVENT_TYPE_TAG_DELETION
        ]
        assert c.gateway.get_subscription(sub.id).secret == ""
        assert [s.id for s in c.gateway.iter_subscriptions(page_size=1)] == [sub.id]
        assert list(c.gateway.list_deliveries(sub.id).deliveries) == []
        with pytest.raises(ValueError, match="push_mirroring"):
            c.gateway.create_subscription(url="https://hooks.example/", event_types=["nope"])

    async def in_asyncio() -> None:
        async with aio.connect(live.address, token=ADMIN_TOKEN) as ac:
            other = await ac.gateway.create_subscription(
                url="https://hooks.example/b", secret="an-async-secret-0123456789"
            )
            assert other.secret == "" and other.has_secret
            ids = [s.id async for s in ac.gateway.iter_subscriptions()]
            assert ids == [sub.id, other.id]
            assert [d async for d in ac.gateway.iter_deliveries(other.id)] == []
            await ac.gateway.delete_subscription(other.id)
            with pytest.raises(errors.NotFound):
                await ac.gateway.get_subscription(other.id)

    import asyncio

    asyncio.run(in_asyncio())
