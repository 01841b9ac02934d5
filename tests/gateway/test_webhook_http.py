"""The /events endpoint over real HTTP: durable inbox, dedup, auth, limits, per-event handling."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.http import ConfigError, WebhookApp, check_secret_required
from gateway.inbox import Inbox
from gateway.schema import open_database
from servicekit import metrics
from tests.gateway.test_webhook_parse import body, push

CT = {"Content-Type": "application/vnd.docker.distribution.events.v1+json"}


async def _client(inbox: Inbox, secret: str = "", limit: int = 4 << 20) -> TestClient:
    app = WebhookApp(inbox, secret, max_body_bytes=limit).make_app()
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


@pytest.fixture
def inbox(tmp_path: Path) -> Inbox:
    return Inbox(open_database(tmp_path))


@pytest.fixture
async def client(inbox: Inbox) -> AsyncIterator[TestClient]:
    c = await _client(inbox)
    yield c
    await c.close()


def _metric(name: str, labels: dict[str, str] | None = None) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels or {}) or 0.0


async def test_push_is_recorded_before_the_answer(client: TestClient, inbox: Inbox) -> None:
    r = await client.post("/events", data=body(push("e1")), headers=CT)
    assert r.status == 200
    assert (await r.json())["accepted"] == 1
    ev = inbox.get("e1")
    assert ev is not None and ev.state == "pending"
    assert (ev.repository, ev.tag) == ("dev/website", "1.0-stable")
    # A second connection to the same file sees it: it is committed, not just cached.
    other = Inbox(open_database(inbox.db.path.parent))  # type: ignore[attr-defined]
    assert other.get("e1") is not None


async def test_redelivery_is_deduplicated(client: TestClient, inbox: Inbox) -> None:
    before = _metric("mirror_events_deduplicated_total")
    for _ in range(2):
        r = await client.post("/events", data=body(push("same")), headers=CT)
        assert r.status == 200
    assert (await r.json())["duplicates"] == 1
    assert inbox.depth() == 1
    assert _metric("mirror_events_deduplicated_total") == before + 1


async def test_pulls_and_blob_pushes_never_enter_the_inbox(
    client: TestClient, inbox: Inbox
) -> None:
    before = _metric("mirror_events_received_total", {"source": "webhook", "action": "pull"})
    blob = push("b", media="application/vnd.oci.image.layer.v1.tar+gzip")
    r = await client.post("/events", data=body(push("p", action="pull"), blob), headers=CT)
    assert r.status == 200
    assert (await r.json())["ignored"] == 2
    assert inbox.depth() == 0 and inbox.get("p") is None and inbox.get("b") is None
    after = _metric("mirror_events_received_total", {"source": "webhook", "action": "pull"})
    assert after == before + 1


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b'{"foo": 1}',
        json.dumps({"events": [{}]}),
        # 100k deep: the decoder's recursion limit (was a 500).
        b"[" * 100_000 + b"]" * 100_000,
        b'{"events": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}",
        # A number too long for int() (ValueError, not JSONDecodeError; was a 500).
        b'{"events": [{"id": ' + b"7" * 5000 + b"}]}",
        b"\xff\xfe\x00 not utf-8",
    ],
    ids=["syntax", "no-events", "empty-event", "deep", "deep-event", "long-number", "binary"],
)
async def test_malformed_body_is_refused_with_a_reason(
    client: TestClient, inbox: Inbox, raw: bytes | str
) -> None:
    r = await client.post("/events", data=raw, headers=CT)
    assert r.status == 400
    doc = await r.json()
    assert doc["reason"] == "malformed" and doc["error"]
    assert len(doc["error"]) < 300
    assert inbox.depth() == 0


async def test_mixed_body_keeps_the_good_events(client: TestClient, inbox: Inbox) -> None:
    bad = push("bad")
    del bad["target"]["digest"]  # type: ignore[attr-defined]
    r = await client.post("/events", data=body(push("good"), bad), headers=CT)
    # 2xx: a registry would otherwise resend (and block on) this body forever.
    assert r.status == 200
    doc = await r.json()
    assert doc["accepted"] == 1
    reason = "'target.digest' missing or invalid"
    assert doc["rejected"] == [{"index": 1, "id": "bad", "reason": reason}]
    assert inbox.get("good") is not None and inbox.get("bad") is None


async def test_oversized_body_is_refused(inbox: Inbox) -> None:
    c = await _client(inbox, limit=1024)
    try:
        big = body(*[push(f"e{i}") for i in range(20)])
        assert len(big) > 1024
        r = await c.post("/events", data=big, headers=CT)
        assert r.status == 413
        # Chunked, without Content-Length: the limit holds on the actual read too.

        async def gen() -> AsyncIterator[bytes]:
            for i in range(0, len(big), 100):
                yield big[i : i + 100]

        r = await c.post("/events", data=gen(), headers=CT)
        assert r.status == 413
        assert inbox.depth() == 0
    finally:
        await c.close()


async def test_secret_is_required_when_configured(inbox: Inbox) -> None:
    c = await _client(inbox, secret="s3cret-value")
    try:
        r = await c.post("/events", data=body(push("a")), headers=CT)
        assert r.status == 401
        r = await c.post(
            "/events", data=body(push("a")), headers={**CT, "Authorization": "Bearer wrong"}
        )
        assert r.status == 401
        assert inbox.depth() == 0
        r = await c.post(
            "/events", data=body(push("a")), headers={**CT, "Authorization": "Bearer s3cret-value"}
        )
        assert r.status == 200 and inbox.depth() == 1
        assert "s3cret-value" not in await r.text()
    finally:
        await c.close()


def test_non_loopback_listener_without_secret_refuses_to_start() -> None:
    with pytest.raises(ConfigError):
        check_secret_required("0.0.0.0", "")
    check_secret_required("0.0.0.0", "x" * 20)
    check_secret_required("127.0.0.1", "")
    check_secret_required("::1", "")
    check_secret_required("localhost", "")


async def test_metrics_and_healthz(client: TestClient) -> None:
    await client.post("/events", data=body(push("m1")), headers=CT)
    r = await client.get("/metrics")
    assert r.status == 200
    text = await r.text()
    assert "mirror_inbox_depth 1.0" in text
    assert "mirror_events_received_total" in text
    r = await client.get("/healthz")
    assert r.status == 200 and (await r.json())["inbox_depth"] == 1


async def test_an_unstorable_event_id_is_dropped_and_the_rest_kept(
    client: TestClient, inbox: Inbox
) -> None:
    # A lone surrogate is valid JSON but cannot be stored as UTF-8 (was a 500 for the batch).
    raw = body(push("good"), push("BAD")).replace(b'"BAD"', b'"\\ud800"')
    r = await client.post("/events", data=raw, headers=CT)
    assert r.status == 200
    doc = await r.json()
    assert doc["accepted"] == 1 and doc["rejected"][0]["index"] == 1
    assert inbox.get("good") is not None and inbox.depth() == 1


async def test_answers_list_at_most_a_few_reasons(client: TestClient, inbox: Inbox) -> None:
    r = await client.post("/events", data=body(*[{"id": f"x{i}"} for i in range(500)]), headers=CT)
    assert r.status == 400
    doc = await r.json()
    assert doc["rejected_count"] == 500 and len(doc["rejected"]) == 20
    assert len(await r.read()) < 4096
