"""A tiny HTTP server of the tests' own, for behaviour no real registry shows (a foreign host
asking for credentials, huge error pages): records every request it gets."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class HostileServer:
    """Answers every request with `handler`; `seen` lists what arrived, `url` is its address."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.seen: list[Seen] = []
        self.url = ""

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append(Seen(request.method, request.path, dict(request.headers), body))
        return await self.handler(request)

    def leaked(self, secret: str) -> list[Seen]:
        """Requests that carried `secret` in clear, in a Basic header, or in the body."""
        out = []
        for s in self.seen:
            auth = s.headers.get("Authorization", "")
            decoded = ""
            if auth.lower().startswith("basic "):
                decoded = base64.b64decode(auth[6:] + "==").decode(errors="replace")
            if secret in auth or secret in decoded or secret.encode() in s.body:
                out.append(s)
        return out


@asynccontextmanager
async def hostile_server(handler: Handler, host: str = "127.0.0.1") -> AsyncIterator[HostileServer]:
    """Serve on `host` (127.0.0.2 is another loopback host than the registries' 127.0.0.1)."""
    server = HostileServer(handler)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", server._handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    server.url = f"http://{host}:{port}"
    try:
        yield server
    finally:
        await runner.cleanup()


async def basic_challenge(request: web.Request) -> web.Response:
    """401 asking for Basic credentials, whatever was asked."""
    return web.Response(
        status=401,
        headers={"WWW-Authenticate": 'Basic realm="capture"'},
        text='{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}',
        content_type="application/json",
    )
