"""A fault-injecting reverse proxy (aiohttp) in front of a real registry.

It runs its own event loop in a thread so sync code (bench, demo) and async tests can both use
it. Rules match a method and a path regex and fire a given number of times (None: always).
Every request is recorded in `log` as (method, path, query) for assertions, and its
User-Agent in `user_agents`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import time
from dataclasses import dataclass, field

from aiohttp import web

from registry_testkit.ports import free_port
from registry_testkit.proxyserver import ThreadedProxyServer, forwardable, relayed_response


@dataclass
class Rule:
    kind: str  # "corrupt" | "status" | "drop" | "delay" | "stall" | "headers"
    method: str
    path: re.Pattern[str]
    times: int | None = 1
    status: int = 429
    retry_after: str | None = None
    after_bytes: int = 0
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    fired: int = 0

    def matches(self, method: str, path: str) -> bool:
        if self.times is not None and self.fired >= self.times:
            return False
        return (self.method in ("*", method)) and bool(self.path.search(path))


@dataclass
class FaultProxy(ThreadedProxyServer):
    """Proxy `upstream` (e.g. "http://127.0.0.1:5000") on a free port; `url` is its address."""

    upstream: str
    port: int = field(default_factory=free_port)
    rules: list[Rule] = field(default_factory=list)
    log: list[tuple[str, str, str]] = field(default_factory=list)
    user_agents: list[str] = field(default_factory=list)
    times: list[float] = field(default_factory=list)  # wall clock of each `log` entry
    in_flight: int = 0
    max_in_flight: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._init_server()

    # -- rules -----------------------------------------------------------------------------

    def _add(self, rule: Rule) -> Rule:
        with self._lock:
            self.rules.append(rule)
        return rule

    def corrupt_blob(self, digest: str, times: int | None = 1, offset: int = 0) -> Rule:
        """Flip one byte (at `offset` of the body) of GET responses for this blob."""
        return self._add(
            Rule(
                "corrupt",
                "GET",
                re.compile(rf"/blobs/{re.escape(digest)}$"),
                times,
                after_bytes=offset,
            )
        )

    def status(
        self,
        path_regex: str,
        status: int = 429,
        times: int | None = 1,
        retry_after: str | None = None,
        method: str = "*",
        headers: dict[str, str] | None = None,
    ) -> Rule:
        """Answer `status` (with Retry-After and `headers`) instead of forwarding."""
        return self._add(
            Rule(
                "status",
                method,
                re.compile(path_regex),
                times,
                status=status,
                retry_after=retry_after,
                headers=dict(headers or {}),
            )
        )

    def add_headers(
        self,
        path_regex: str,
        headers: dict[str, str],
        times: int | None = None,
        method: str = "*",
    ) -> Rule:
        """Add (or replace) `headers` on forwarded answers, e.g. `RateLimit-Remaining`."""
        return self._add(
            Rule("headers", method, re.compile(path_regex), times, headers=dict(headers))
        )

    def drop_mid_body(
        self, path_regex: str, times: int | None = 1, after_bytes: int = 1024, method: str = "GET"
    ) -> Rule:
        """Send headers and `after_bytes` of the body, then cut the connection."""
        return self._add(
            Rule("drop", method, re.compile(path_regex), times, after_bytes=after_bytes)
        )

    def delay(
        self, path_regex: str, seconds: float, times: int | None = None, method: str = "*"
    ) -> Rule:
        return self._add(Rule("delay", method, re.compile(path_regex), times, delay=seconds))

    def stall(
        self,
        path_regex: str,
        times: int | None = 1,
        after_bytes: int = 1024,
        seconds: float = 3600.0,
        method: str = "GET",
    ) -> Rule:
        """Send headers and `after_bytes` of the body, then go silent with the connection
        open for `seconds` (or until the proxy stops), then cut it: a registry hung mid-body."""
        return self._add(
            Rule(
                "stall",
                method,
                re.compile(path_regex),
                times,
                after_bytes=after_bytes,
                delay=seconds,
            )
        )

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()

    def requests(self, method: str, path_regex: str) -> list[tuple[str, str, str]]:
        """Logged requests with this method whose path matches the regex."""
        rx = re.compile(path_regex)
        with self._lock:
            return [r for r in self.log if r[0] == method and rx.search(r[1])]

    def _take(self, kind: str, method: str, path: str) -> Rule | None:
        with self._lock:
            for rule in self.rules:
                if rule.kind == kind and rule.matches(method, path):
                    rule.fired += 1
                    return rule
        return None

    # -- serving ---------------------------------------------------------------------------

    async def _silence(self, seconds: float) -> bool:
        """Wait `seconds`, or less when the proxy stops (True then), so that a stalled
        answer never delays its shutdown."""
        if self._stop is None:
            await asyncio.sleep(seconds)
            return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)
        return self._stop.is_set()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._forward(request)
        finally:
            self.in_flight -= 1

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        method, path = request.method, request.path
        with self._lock:
            self.log.append((method, path, request.query_string))
            self.user_agents.append(request.headers.get("User-Agent", ""))
            self.times.append(time.time())
        delay = self._take("delay", method, path)
        # Before the request body is read: a long delay is a registry not reading it.
        if delay is not None and await self._silence(delay.delay):
            if request.transport is not None:
                request.transport.abort()
            raise ConnectionResetError("fault proxy: stopping")
        st = self._take("status", method, path)
        if st is not None:
            await request.read()
            headers = {"Retry-After": st.retry_after} if st.retry_after else {}
            headers.update(st.headers)
            code = {429: "TOOMANYREQUESTS", 503: "UNAVAILABLE"}.get(st.status, "UNSUPPORTED")
            body = b'{"errors":[{"code":"%s","message":"injected"}]}' % code.encode()
            return web.Response(
                status=st.status, body=body, headers=headers, content_type="application/json"
            )
        body = await request.read()
        headers = forwardable(request.headers)
        headers["Host"] = request.host  # the registry builds Location URLs from it
        assert self._session is not None
        async with self._session.request(
            method,
            self.upstream + request.path_qs,
            headers=headers,
            data=body or None,
            allow_redirects=False,
        ) as up:
            resp = relayed_response(up)
            extra = self._take("headers", method, path)
            for k, v in extra.headers.items() if extra is not None else ():
                resp.headers[k] = v
            corrupt = self._take("corrupt", method, path) if up.status == 200 else None
            drop = self._take("drop", method, path) if up.status < 300 else None
            stall = self._take("stall", method, path) if up.status < 300 else None
            if drop is not None and (up.content_length == 0 or method in ("PATCH", "PUT")):
                # The registry did the work; the client never hears of it.
                if request.transport is not None:
                    request.transport.abort()
                raise ConnectionResetError("fault proxy: dropped the answer")
            await resp.prepare(request)
            sent = 0
            async for chunk in up.content.iter_chunked(64 << 10):
                if corrupt is not None and sent <= corrupt.after_bytes < sent + len(chunk):
                    i = corrupt.after_bytes - sent
                    chunk = chunk[:i] + bytes([chunk[i] ^ 0xFF]) + chunk[i + 1 :]
                    corrupt = None
                if drop is not None and sent + len(chunk) > drop.after_bytes:
                    await resp.write(chunk[: max(drop.after_bytes - sent, 0)])
                    if request.transport is not None:
                        request.transport.abort()
                    raise ConnectionResetError("fault proxy: dropped mid-body")
                if stall is not None and sent + len(chunk) > stall.after_bytes:
                    await resp.write(chunk[: max(stall.after_bytes - sent, 0)])
                    await self._silence(stall.delay)
                    if request.transport is not None:
                        request.transport.abort()
                    raise ConnectionResetError("fault proxy: stalled, then cut")
                await resp.write(chunk)
                sent += len(chunk)
            await resp.write_eof()
            return resp
