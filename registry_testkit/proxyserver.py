"""The part every test proxy shares: an aiohttp server on its own event loop in a thread.

Sync code (bench, demo) and async tests alike can start one; subclasses only answer requests.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Self

import aiohttp
from aiohttp import web

# Headers that belong to one hop and must not be forwarded.
HOP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
        "trailer",
        "host",
        "content-length",
    }
)


def forwardable(headers: Any) -> dict[str, str]:
    """The end-to-end headers of a request or response; a header sent several times (skopeo
    sends one `Accept` per media type) is joined into one comma-separated value, as HTTP
    allows, instead of keeping only the last."""
    out: dict[str, str] = {}
    for k, v in headers.items():
        if k.lower() in HOP_HEADERS:
            continue
        out[k] = f"{out[k]}, {v}" if k in out else v
    return out


def relayed_response(up: aiohttp.ClientResponse) -> web.StreamResponse:
    """A response to stream back for the upstream's `up`: its status, its end-to-end headers
    (each kept, repeats too) and its length when known. Not prepared yet."""
    resp = web.StreamResponse(status=up.status)
    for k, v in up.headers.items():
        if k.lower() not in HOP_HEADERS:
            resp.headers.add(k, v)
    if up.content_length is not None:
        resp.content_length = up.content_length
    return resp


class ThreadedProxyServer:
    """Serves `_handle` on 127.0.0.1:`port` with an upstream `_session`, from a thread."""

    port: int

    def _init_server(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raise NotImplementedError

    async def _serve(self) -> None:
        session = aiohttp.ClientSession(
            auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None)
        )
        self._session = session
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()
        await session.close()

    def start(self) -> Self:
        def run() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self._serve())
            self._loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError(f"{type(self).__name__} did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
