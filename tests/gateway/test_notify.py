"""Outbound PUSH_MIRRORING notifications: retried with backoff, never blocking the caller."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer
from mirror.v1 import gateway_pb2

from gateway.notify import Notifier
from gateway.runs import RunRecord

Run = gateway_pb2.Run


def finished_run() -> RunRecord:
    now = time.time()
    return RunRecord(
        id="run-1",
        policy_id="pol-1",
        policy_name="website-to-qa",
        event_id="ev",
        trigger=Run.TRIGGER_EVENT,
        src_endpoint="dev",
        src_repository="dev/website",
        src_tag="1.0-stable",
        src_digest="sha256:" + "c" * 64,
        dst_endpoint="qa",
        dst_repository="qa/website",
        dst_tag="20260101-000000",
        state=Run.STATE_SUCCEEDED,
        message="mirrored",
        transfer_id="t-1",
        create_time=now,
        update_time=now,
        end_time=now,
    )


async def test_delivered_after_a_failure_with_the_event_document() -> None:
    got: list[dict[str, Any]] = []
    calls = 0

    async def hook(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            return web.Response(status=503)
        got.append(await request.json())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    server = TestServer(app)
    await server.start_server()
    n = Notifier([str(server.make_url("/hook"))], base_delay_s=0.01)
    await n.start()
    try:
        t0 = time.monotonic()
        await n.send(finished_run())
        assert time.monotonic() - t0 < 0.05  # queued, not sent inline
        await asyncio.wait_for(n.drain(), 5)
    finally:
        await n.stop()
        await server.close()
    assert calls == 2 and n.delivered == 1 and n.failed == 0
    (doc,) = got
    assert doc["type"] == "PUSH_MIRRORING" and doc["state"] == "SUCCEEDED"
    assert doc["policy"] == {"id": "pol-1", "name": "website-to-qa"}
    assert doc["source"] == {"endpoint": "dev", "repository": "dev/website", "tag": "1.0-stable"}
    assert doc["destination"]["tag"] == "20260101-000000"
    assert doc["digest"] == "sha256:" + "c" * 64 and str(doc["time"]).endswith("Z")


async def test_gives_up_after_bounded_attempts() -> None:
    async def hook(_request: web.Request) -> web.Response:
        return web.Response(status=500)

    app = web.Application()
    app.router.add_post("/hook", hook)
    server = TestServer(app)
    await server.start_server()
    n = Notifier([str(server.make_url("/hook"))], attempts=3, base_delay_s=0.01)
    await n.start()
    try:
        await n.send(finished_run())
        await asyncio.wait_for(n.drain(), 5)
    finally:
        await n.stop()
        await server.close()
    assert (n.delivered, n.failed) == (0, 1)
