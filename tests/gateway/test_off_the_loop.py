"""No call to the gateway's database blocks the event loop (issue 11, item 1).

The embedded stack runs in this process with a guard on the gateway's database: a query or a
transaction started on a thread running an event loop is recorded. A push acted on through
the webhook, its transfer tracked to the end, a scheduled poll, a reconcile sweep, ApplyPolicy,
NotifyPush, an unplaced event, an outbound delivery and every read RPC, /healthz and /metrics
all run; none of them touches the database on the loop (they await `db.run`)."""

from __future__ import annotations

import asyncio
import functools
import json
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from google.protobuf.duration_pb2 import Duration
from grpc import aio
from mirror.v1 import (
    common_pb2,
    gateway_pb2,
    gateway_pb2_grpc,
    policy_pb2,
    policy_pb2_grpc,
    transfer_pb2,
    transfer_pb2_grpc,
)

import gateway.service
from registry_testkit.images import ImageBuilder, push
from registry_testkit.ports import free_port
from registry_testkit.registry import RegistryProcess
from servicekit.db import Database
from stack.app import StackConfig, start_stack
from tests.support.registry import RegistryFactory

pytestmark = pytest.mark.registry

Run = gateway_pb2.Run
T = TypeVar("T")
FINAL = {Run.STATE_SUCCEEDED, Run.STATE_FAILED, Run.STATE_NOT_MATCHED, Run.STATE_BLOCKED,
         Run.STATE_SKIPPED}


def _on_a_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def guard(db: Database, seen: list[str]) -> Database:
    """Record every query or transaction the database starts on an event loop's thread."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def checked(*args: Any, **kwargs: Any) -> Any:
            if _on_a_loop():
                seen.append("".join(traceback.format_stack(limit=8)[:-1]))
            return fn(*args, **kwargs)

        return checked

    for name in ("query", "query_one", "transaction"):
        setattr(db, name, wrap(getattr(db, name)))
    return db


async def until(what: str, fn: Callable[[], Awaitable[T | None]], timeout: float = 60) -> T:
    async with asyncio.timeout(timeout):
        while True:
            value = await fn()
            if value:
                return value
            await asyncio.sleep(0.1)
    raise AssertionError(what)  # pragma: no cover - the timeout raises first


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    got: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        got.append(json.loads(await request.read()))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("/hook")), got
    await server.close()


async def test_the_gateway_never_calls_its_database_on_the_event_loop(
    tmp_path: Path,
    registry_factory: RegistryFactory,
    receiver: tuple[str, list[dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[str] = []
    opened = gateway.service.open_database
    monkeypatch.setattr(
        gateway.service, "open_database", lambda *a, **k: guard(opened(*a, **k), seen)
    )
    hook_url, delivered = receiver
    http = f"127.0.0.1:{free_port()}"
    dev: RegistryProcess = registry_factory(
        notifications=[{"name": "gw", "url": f"http://{http}/events"}]
    )
    qa = registry_factory()
    stack = await start_stack(
        StackConfig(
            data_dir=tmp_path / "data", grpc_listen="127.0.0.1:0", http_listen=http,
            notify_urls=[hook_url], reconcile_interval_s=0.5, scanner=False, console=False,
        )
    )
    channel = aio.insecure_channel(stack.grpc_address)
    try:
        transfer = transfer_pb2_grpc.TransferServiceStub(channel)
        policies = policy_pb2_grpc.PolicyServiceStub(channel)
        gw = gateway_pb2_grpc.GatewayServiceStub(channel)
        for name, reg in (("dev", dev), ("qa", qa)):
            await transfer.CreateEndpoint(transfer_pb2.CreateEndpointRequest(
                endpoint=transfer_pb2.Endpoint(name=name, url=reg.url)), timeout=30)

        def policy(name: str, repo: str, **kw: Any) -> policy_pb2.Policy:
            return policy_pb2.Policy(
                name=name, source=policy_pb2.PolicySource(endpoint="dev", repository=repo),
                rule="true", target=common_pb2.Target(endpoint="qa", repository=f"qa/{name}"),
                tag_template="%n", enabled=True, **kw)

        pushed = await policies.CreatePolicy(policy_pb2.CreatePolicyRequest(
            policy=policy("app", "dev/app")), timeout=30)
        pulled = await policies.CreatePolicy(policy_pb2.CreatePolicyRequest(policy=policy(
            "pulled", "dev/pulled", trigger=policy_pb2.PolicyTrigger(
                schedule=policy_pb2.ScheduleTrigger(interval=Duration(seconds=1)))
        )), timeout=30)

        async def baseline() -> bool:
            st = await gw.GetPolicyStatus(
                gateway_pb2.GetPolicyStatusRequest(policy_id=pushed.id), timeout=10)
            return st.HasField("baseline_time")

        await until("the baseline", baseline)
        builder = ImageBuilder(tmp_path / "img")
        # skopeo blocks: off the loop, so that the stack keeps answering meanwhile.
        await asyncio.to_thread(push, builder.image("1.0"), dev, "dev/app")
        await asyncio.to_thread(push, builder.image("2.0"), dev, "dev/pulled")

        async def finished(policy_id: str) -> list[Any]:
            resp = await gw.ListRuns(gateway_pb2.ListRunsRequest(policy_id=policy_id),
                                     timeout=10)
            return [r for r in resp.runs if r.state == Run.STATE_SUCCEEDED]

        (event_run,) = await until("the pushed image mirrored", lambda: finished(pushed.id))
        (poll_run,) = await until("the polled image mirrored", lambda: finished(pulled.id))
        assert event_run.trigger == Run.TRIGGER_EVENT and poll_run.trigger == Run.TRIGGER_SCHEDULE
        # The RPCs that read or write the gateway's tables.
        await gw.NotifyPush(gateway_pb2.NotifyPushRequest(
            endpoint="dev", repository="dev/app", tag="1.0", event_id="ci-1"), timeout=10)
        await gw.Reconcile(gateway_pb2.ReconcileRequest(), timeout=60)
        await gw.ApplyPolicy(gateway_pb2.ApplyPolicyRequest(policy_id=pushed.id), timeout=60)
        await gw.ListPolls(gateway_pb2.ListPollsRequest(policy_id=pulled.id), timeout=10)
        await gw.ListUnplacedEvents(gateway_pb2.ListUnplacedEventsRequest(), timeout=10)
        sub = await gw.CreateSubscription(gateway_pb2.CreateSubscriptionRequest(
            subscription=gateway_pb2.Subscription(url=hook_url)), timeout=10)
        await gw.GetSubscription(gateway_pb2.GetSubscriptionRequest(id=sub.id), timeout=10)
        await gw.ListSubscriptions(gateway_pb2.ListSubscriptionsRequest(), timeout=10)
        await gw.ListDeliveries(gateway_pb2.ListDeliveriesRequest(), timeout=10)
        await gw.DeleteSubscription(gateway_pb2.DeleteSubscriptionRequest(id=sub.id), timeout=10)
        async with aiohttp.ClientSession() as session:
            stranger = {"events": [{
                "id": "from-a-stranger", "action": "push", "target": {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "repository": "x/y", "tag": "1", "digest": "sha256:" + "0" * 64,
                    "url": "http://stranger.example:5000/v2/x/y/manifests/1"},
                "request": {"host": "stranger.example:5000"}}]}
            async with session.post(f"http://{http}/events", json=stranger) as resp:
                assert resp.status == 200, await resp.text()
            for path in ("/healthz", "/metrics"):
                async with session.get(f"http://{http}{path}") as resp:
                    assert resp.status == 200
        await until("the outbound events delivered", lambda: asyncio.sleep(0, len(delivered) >= 2))
        assert {d["run_id"] for d in delivered} >= {event_run.id, poll_run.id}
    finally:
        await channel.close()
        await stack.stop()
    assert seen == [], f"{len(seen)} database call(s) on the event loop, first:\n{seen[0]}"
