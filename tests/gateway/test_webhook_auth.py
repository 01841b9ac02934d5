"""POST /events/NAME against the real transfer service on a real gRPC server: the endpoint's
webhook secret is checked there (positive answers cached by a hash of the token), events are
placed at NAME, and the token never reaches a log or an answer."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography.fernet import Fernet
from grpc import aio
from mirror.v1 import transfer_pb2, transfer_pb2_grpc

from gateway.endpoints import EndpointDirectory
from gateway.http import WebhookApp
from gateway.inbox import Inbox
from gateway.schema import open_database as open_gateway_db
from gateway.webhook_auth import WebhookVerifier
from registry_testkit.ports import free_port
from servicekit.server import start_server
from tests.gateway.test_webhook_parse import body, push
from transfer_service.endpoints import EndpointStore
from transfer_service.jobs import Journal
from transfer_service.schema import open_database as open_transfer_db
from transfer_service.secrets import SecretBox
from transfer_service.servicer import TransferServicer
from transfer_service.worker import Worker

CT = {"Content-Type": "application/vnd.docker.distribution.events.v1+json"}
TOKEN = "dev-webhook-token-0123456789abcdef"
SHARED = "shared-secret-0123456789"


class CountCalls(aio.ServerInterceptor):  # type: ignore[misc]
    """Counts calls per method name (how often the gateway asked the transfer service)."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        # Seconds a method takes before it is served (a slow transfer service).
        self.slow: dict[str, float] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        name = details.method.rsplit("/", 1)[-1]
        self.calls[name] = self.calls.get(name, 0) + 1
        if name in self.slow:
            await asyncio.sleep(self.slow[name])
        return await continuation(details)


@dataclass
class Setup:
    client: TestClient
    inbox: Inbox
    transfer: transfer_pb2_grpc.TransferServiceStub
    counter: CountCalls


def _bearer(token: str) -> dict[str, str]:
    return {**CT, "Authorization": f"Bearer {token}"}


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    tdb = open_transfer_db(tmp_path / "transfer")
    store = EndpointStore(tdb, SecretBox([Fernet.generate_key()]))
    journal = Journal(tdb)
    servicer = TransferServicer(store, journal, Worker(journal, store, engine=None))
    counter = CountCalls()
    server = await start_server([servicer], "127.0.0.1:0", interceptors=[counter])
    channel = aio.insecure_channel(f"127.0.0.1:{server.port}")
    stub = transfer_pb2_grpc.TransferServiceStub(channel)
    for name, secret in (("dev", TOKEN), ("plain", "")):
        await stub.CreateEndpoint(
            transfer_pb2.CreateEndpointRequest(
                endpoint=transfer_pb2.Endpoint(
                    name=name,
                    url=f"http://127.0.0.1:{5000 + len(name)}",
                    webhook_secret=secret,
                )
            )
        )
    inbox = Inbox(open_gateway_db(tmp_path / "gateway"))
    app = WebhookApp(
        inbox,
        SHARED,
        verifier=WebhookVerifier(stub),
        directory=EndpointDirectory(stub),
    ).make_app()
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield Setup(client, inbox, stub, counter)
    finally:
        await client.close()
        await channel.close()
        await server.stop(0)
        inbox.db.close()
        tdb.close()


async def test_token_places_events_at_the_endpoint_and_is_cached(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    # The event's hosts name no endpoint: it is placed by the path, not by its hosts.
    ev = push("e1", request={"host": "elsewhere.example:443"})
    r = await setup.client.post("/events/dev", data=body(ev), headers=_bearer(TOKEN))
    assert r.status == 200 and (await r.json())["accepted"] == 1
    got = setup.inbox.get("e1")
    assert got is not None and got.endpoint == "dev" and got.state == "pending"
    assert setup.counter.calls["VerifyWebhookSecret"] == 1
    # A second delivery within the cache time is not asked about again.
    r = await setup.client.post("/events/dev", data=body(push("e2")), headers=_bearer(TOKEN))
    assert r.status == 200
    assert setup.counter.calls["VerifyWebhookSecret"] == 1

    # Wrong tokens are asked about every time (never cached), and refused.
    for _ in range(2):
        r = await setup.client.post(
            "/events/dev", data=body(push("x")), headers=_bearer("nope-" * 4)
        )
        assert r.status == 401
        assert (await r.json())["reason"] == "unauthorized"
    assert setup.counter.calls["VerifyWebhookSecret"] == 3
    assert setup.inbox.get("x") is None
    assert TOKEN not in caplog.text and "nope-nope" not in caplog.text


async def test_missing_token_shared_secret_and_unknown_endpoint(setup: Setup) -> None:
    r = await setup.client.post("/events/dev", data=body(push("a")), headers=CT)
    assert r.status == 401
    # The shared secret is not the endpoint's token.
    r = await setup.client.post("/events/dev", data=body(push("a")), headers=_bearer(SHARED))
    assert r.status == 401
    r = await setup.client.post("/events/nosuch", data=body(push("a")), headers=_bearer(TOKEN))
    assert r.status == 404 and (await r.json())["reason"] == "unknown_endpoint"
    # Not an endpoint name at all: 404 without asking.
    before = setup.counter.calls.get("VerifyWebhookSecret", 0)
    r = await setup.client.post("/events/No%20Such", data=body(push("a")), headers=_bearer(TOKEN))
    assert r.status == 404
    assert setup.counter.calls.get("VerifyWebhookSecret", 0) == before
    # An endpoint without a webhook secret has no authenticated path.
    r = await setup.client.post("/events/plain", data=body(push("a")), headers=_bearer(TOKEN))
    assert r.status == 401 and "no webhook secret" in (await r.json())["error"]
    assert setup.inbox.depth() == 0


async def test_shared_path_claims_of_an_endpoint_with_a_secret_are_refused(setup: Setup) -> None:
    claims_dev = push("f1", request={"host": "127.0.0.1:5003"})
    del claims_dev["target"]["url"]  # type: ignore[attr-defined]
    claims_plain = push("p1", request={"host": "127.0.0.1:5005"})
    del claims_plain["target"]["url"]  # type: ignore[attr-defined]
    r = await setup.client.post("/events", data=body(claims_dev), headers=_bearer(SHARED))
    assert r.status == 403
    doc = await r.json()
    assert doc["reason"] == "needs_endpoint_token" and "/events/dev" in doc["error"]
    refused = setup.inbox.get("refused/f1")
    assert (
        refused is not None and refused.state == "refused" and refused.hosts == ("127.0.0.1:5003",)
    )
    # The genuine event with that id, when it comes on the right path, is not a duplicate.
    r = await setup.client.post("/events/dev", data=body(claims_dev), headers=_bearer(TOKEN))
    assert (await r.json())["accepted"] == 1
    # In a mixed batch the refused one is reported and the other recorded (200).
    claims_dev2 = {**claims_dev, "id": "f2"}
    r = await setup.client.post(
        "/events", data=body(claims_dev2, claims_plain), headers=_bearer(SHARED)
    )
    assert r.status == 200
    doc = await r.json()
    assert doc["accepted"] == 1 and [x["id"] for x in doc["refused"]] == ["f2"]
    assert setup.inbox.get("p1") is not None and setup.inbox.get("f2") is None
    assert setup.inbox.counts()["refused"] == 2


async def test_transfer_service_unreachable_is_503(tmp_path: Path) -> None:
    channel = aio.insecure_channel(f"127.0.0.1:{free_port()}")  # nothing listens there
    inbox = Inbox(open_gateway_db(tmp_path))
    verifier = WebhookVerifier(transfer_pb2_grpc.TransferServiceStub(channel), timeout_s=2)
    client = TestClient(TestServer(WebhookApp(inbox, SHARED, verifier=verifier).make_app()))
    await client.start_server()
    try:
        r = await client.post("/events/dev", data=body(push("u1")), headers=_bearer(TOKEN))
        assert r.status == 503
        doc: dict[str, Any] = await r.json()
        assert doc["reason"] == "unavailable" and TOKEN not in str(doc)
        assert inbox.depth() == 0
    finally:
        await client.close()
        await channel.close()
        inbox.db.close()


async def test_concurrent_unknown_hosts_share_one_endpoint_list_read(setup: Setup) -> None:
    # Each miss re-reads the endpoint list (a brand-new endpoint is seen at once), but misses
    # that overlap share a read: 20 deliveries at once must not make 20 ListEndpoints calls.
    def unknown(i: int) -> bytes:
        return body(push(f"u{i}", request={"host": f"unknown-{i}.example:5000"}))

    before = setup.counter.calls.get("ListEndpoints", 0)
    # A slow list: the deliveries overlap however loaded the machine is.
    setup.counter.slow["ListEndpoints"] = 0.5
    answers = await asyncio.gather(
        *[setup.client.post("/events", data=unknown(i), headers=_bearer(SHARED)) for i in range(20)]
    )
    assert [r.status for r in answers] == [200] * 20
    assert setup.counter.calls.get("ListEndpoints", 0) - before <= 10
    assert setup.inbox.depth() == 20
