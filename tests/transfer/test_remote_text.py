"""Remote error text is cut to a short, sanitised excerpt (issue 10, finding 7): a non-registry
server's 64 KB error body never reaches TestConnection or transfer messages, which read-only
tokens can see. The hostile server is the test's own (no registry sends such bodies)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web
from mirror.v1 import common_pb2, transfer_pb2

from registry_testkit.images import ImageBuilder, push
from registry_testkit.ports import free_port
from registry_testkit.registry import RegistryProcess
from tests.transfer.transfer_support import Served, ServeFn, endpoint_msg

T = transfer_pb2.Transfer
MARK = "HOSTILE-BODY-MARK"
# First line 10 KB long, terminal escapes, then 54 KB more lines.
BODY = ("\x1b[2J\x1b]0;pwned\x07" + MARK + "x" * 10_000 + "\n" + (MARK + "\n") * 3000).encode()


@asynccontextmanager
async def hostile_server(status: int) -> AsyncIterator[str]:
    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=status, body=BODY, content_type="text/html")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def _assert_short_and_clean(text: str) -> None:
    assert len(text) < 1000, len(text)
    assert "\x1b" not in text and "\x07" not in text
    assert text.count(MARK) <= 1


async def _add(s: Served, name: str, url: str) -> None:
    await s.stub.CreateEndpoint(
        transfer_pb2.CreateEndpointRequest(endpoint=endpoint_msg(name, url))
    )


async def test_test_connection_messages_are_short_excerpts(endpoints_only: Served) -> None:
    for status in (500, 400, 404):
        async with hostile_server(status) as url:
            name = f"hostile-{status}"
            await _add(endpoints_only, name, url)
            resp = await endpoints_only.stub.TestConnection(
                transfer_pb2.TestConnectionRequest(
                    endpoint=name, repository="a/b", check_push=True
                )
            )
            assert not resp.ok
            for c in resp.checks:
                _assert_short_and_clean(c.message)
            await endpoints_only.stub.DeleteEndpoint(
                transfer_pb2.DeleteEndpointRequest(name=name)
            )


async def test_transfer_message_is_a_short_excerpt(
    serve: ServeFn, registry: RegistryProcess, images: ImageBuilder
) -> None:
    push(images.image("1.0"), registry, "team/app")
    s = await serve(max_attempts=1)
    await _add(s, "dev", registry.url)
    async with hostile_server(400) as url:
        await _add(s, "qa", url)
        t = await s.stub.StartTransfer(
            transfer_pb2.StartTransferRequest(
                source=common_pb2.ImageLocation(
                    endpoint="dev", repository="team/app", reference="1.0"
                ),
                destination=transfer_pb2.TransferDestination(endpoint="qa", repository="qa/app"),
            )
        )
        deadline = time.monotonic() + 60
        while (job := await s.stub.GetTransfer(transfer_pb2.GetTransferRequest(id=t.id))).state in (
            T.STATE_WAITING, T.STATE_RUNNING,
        ):
            assert time.monotonic() < deadline, job
            await asyncio.sleep(0.1)
    assert job.state == T.STATE_ERROR, job
    assert job.message
    _assert_short_and_clean(job.message)
