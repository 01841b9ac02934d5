"""A capture server of the tests' own: answers every request 401 with a Basic challenge (as a
registry asking for credentials would) and records the Authorization headers it receives."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web

from registry_testkit.ports import free_port


@dataclass
class Capture:
    port: int
    authorizations: list[str] = field(default_factory=list)
    requests: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def saw_password(self, password: str) -> bool:
        """Whether any header carried `password` (in clear or Basic-encoded)."""
        for value in self.authorizations:
            if password in value:
                return True
            scheme, _, blob = value.partition(" ")
            if scheme.lower() == "basic":
                try:
                    decoded = base64.b64decode(blob.strip()).decode(errors="replace")
                except ValueError:
                    continue
                if password in decoded:
                    return True
        return False


@asynccontextmanager
async def capture_server() -> AsyncIterator[Capture]:
    cap = Capture(free_port())

    async def handle(request: web.Request) -> web.Response:
        cap.requests += 1
        if "Authorization" in request.headers:
            cap.authorizations.append(request.headers["Authorization"])
        await request.read()
        return web.Response(
            status=401,
            headers={"WWW-Authenticate": 'Basic realm="capture"'},
            content_type="application/json",
            body=b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}',
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", cap.port)
    await site.start()
    try:
        yield cap
    finally:
        await runner.cleanup()
