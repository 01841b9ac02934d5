"""A streaming reverse proxy in front of a real registry that paces bodies and logs their timing.

Unlike the test kit's fault proxy (which reads a request body whole before forwarding it), this
one streams both directions, so tests can see when the first bytes of an upload reach the
destination while a download is still running, throttle or pause a download, and cut an upload
mid-body. It runs its own event loop in a thread, like the fault proxy.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from registry_testkit.ports import free_port
from registry_testkit.proxyserver import ThreadedProxyServer, forwardable, relayed_response


@dataclass
class Exchange:
    """One proxied request; times are `time.monotonic()` (comparable across proxies)."""

    method: str
    path: str
    query: str
    start: float
    request_bytes: int = 0
    first_request_byte: float | None = None
    response_bytes: int = 0
    last_response_byte: float | None = None
    status: int = 0
    done: float | None = None


@dataclass
class _Pace:
    path: re.Pattern[str]
    bytes_per_second: float = 0.0
    pause_at: int = -1
    pause_seconds: float = 0.0


@dataclass
class _Cut:
    method: str
    path: re.Pattern[str]
    after_bytes: int
    times: int
    fired: int = 0


@dataclass
class PacingProxy(ThreadedProxyServer):
    """Proxy `upstream` on a free loopback port; `url` is its address."""

    upstream: str
    port: int = field(default_factory=free_port)
    exchanges: list[Exchange] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._paces: list[_Pace] = []
        self._cuts: list[_Cut] = []
        self._init_server()

    # -- behaviour -------------------------------------------------------------------------

    def throttle(self, path_regex: str, bytes_per_second: float) -> None:
        """Send response bodies of matching GETs at about this rate."""
        with self._lock:
            self._paces.append(_Pace(re.compile(path_regex), bytes_per_second=bytes_per_second))

    def pause(self, path_regex: str, at_byte: int, seconds: float) -> None:
        """Stop sending a matching GET response body for `seconds` once `at_byte` went out."""
        with self._lock:
            self._paces.append(
                _Pace(re.compile(path_regex), pause_at=at_byte, pause_seconds=seconds)
            )

    def cut_request(
        self, path_regex: str, after_bytes: int, method: str = "PATCH", times: int = 1
    ) -> None:
        """Break the connection once `after_bytes` of a matching request body went upstream."""
        with self._lock:
            self._cuts.append(_Cut(method, re.compile(path_regex), after_bytes, times))

    def find(self, method: str, path_regex: str) -> list[Exchange]:
        rx = re.compile(path_regex)
        with self._lock:
            return [e for e in self.exchanges if e.method == method and rx.search(e.path)]

    # -- serving ---------------------------------------------------------------------------

    def _take_cut(self, method: str, path: str, total: int) -> _Cut | None:
        """A cut rule that fires now that `total` request bytes arrived (counted as fired)."""
        with self._lock:
            for c in self._cuts:
                if (
                    c.method == method
                    and c.fired < c.times
                    and total >= c.after_bytes
                    and c.path.search(path)
                ):
                    c.fired += 1
                    return c
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        ex = Exchange(request.method, request.path, request.query_string, time.monotonic())
        with self._lock:
            self.exchanges.append(ex)
            paces = [p for p in self._paces if p.path.search(request.path)]
        async def body() -> AsyncIterator[bytes]:
            async for chunk in request.content.iter_any():
                if ex.first_request_byte is None:
                    ex.first_request_byte = time.monotonic()
                cut = self._take_cut(request.method, request.path, ex.request_bytes + len(chunk))
                if cut is not None:
                    chunk = chunk[: cut.after_bytes - ex.request_bytes]
                    ex.request_bytes += len(chunk)
                    yield chunk
                    await asyncio.sleep(0.05)  # let those bytes reach the registry
                    raise ConnectionResetError("pacing proxy: upload cut")
                ex.request_bytes += len(chunk)
                yield chunk

        headers = forwardable(request.headers)
        headers["Host"] = request.host  # the registry builds Location URLs from it
        has_body = request.body_exists and request.method not in ("GET", "HEAD")
        if not has_body:
            headers["Content-Length"] = "0" if request.method in ("POST", "PUT", "PATCH") else ""
            headers = {k: v for k, v in headers.items() if v != ""}
        assert self._session is not None
        try:
            up_cm = self._session.request(
                request.method,
                self.upstream + request.path_qs,
                headers=headers,
                data=body() if has_body else None,
                allow_redirects=False,
            )
            async with up_cm as up:
                ex.status = up.status
                resp = relayed_response(up)
                await resp.prepare(request)
                t0 = time.monotonic()
                paused = False
                async for chunk in up.content.iter_chunked(32 << 10):
                    for p in paces:
                        if not paused and 0 <= p.pause_at <= ex.response_bytes + len(chunk):
                            paused = True
                            await asyncio.sleep(p.pause_seconds)
                            t0 += p.pause_seconds
                        if p.bytes_per_second:
                            due = t0 + (ex.response_bytes + len(chunk)) / p.bytes_per_second
                            await asyncio.sleep(max(0.0, due - time.monotonic()))
                    await resp.write(chunk)
                    ex.response_bytes += len(chunk)
                    ex.last_response_byte = time.monotonic()
                await resp.write_eof()
                return resp
        except (aiohttp.ClientError, ConnectionResetError):
            if request.transport is not None:
                request.transport.abort()
            raise
        finally:
            ex.done = time.monotonic()
