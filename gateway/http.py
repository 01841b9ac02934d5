"""The gateway's HTTP side (aiohttp): /events (registry webhooks), /metrics, /healthz."""

from __future__ import annotations

import hmac
import ipaddress
import logging
import time
from collections.abc import Callable

from aiohttp import web
from mirror.v1 import gateway_pb2
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.inbox import Inbox, InboxEvent
from gateway.webhook import EnvelopeError, parse_body
from servicekit import metrics
from servicekit.logs import context_id
from servicekit.request_log import request_id

log = logging.getLogger("gateway.http")

MAX_BODY_BYTES = 4 << 20


class ConfigError(ValueError):
    """The HTTP listener is configured unsafely (refuse to start)."""


def is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def split_listen(listen: str) -> tuple[str, int]:
    """HOST:PORT -> (host, port); IPv6 hosts in brackets."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"--http-listen must be HOST:PORT, got {listen!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def check_secret_required(listen_host: str, secret: str) -> None:
    """A listener reachable from other machines must authenticate its callers."""
    if not secret and not is_loopback(listen_host):
        raise ConfigError(
            f"the webhook listener on {listen_host} is not loopback: set a shared secret "
            "(--webhook-secret-file or $MIRROR_WEBHOOK_SECRET) and give it to the registries "
            "as 'Authorization: Bearer SECRET'"
        )


def _reject(reason: str, status: int, message: str, **extra: object) -> web.Response:
    metrics.EVENTS_REJECTED.labels(reason).inc()
    return web.json_response({"error": message, "reason": reason, **extra}, status=status)


class WebhookApp:
    """Builds the aiohttp application; events go into the inbox before the 2xx answer."""

    def __init__(
        self,
        inbox: Inbox,
        secret: str = "",
        *,
        max_body_bytes: int = MAX_BODY_BYTES,
        health: Callable[[], dict[str, object]] | None = None,
    ) -> None:
        self.inbox = inbox
        self._secret = secret.encode()
        self.max_body_bytes = max_body_bytes
        self.health = health

    def make_app(self) -> web.Application:
        # client_max_size is a backstop; the handler enforces the limit itself (413 with JSON).
        app = web.Application(client_max_size=self.max_body_bytes + 1024)
        app.router.add_post("/events", self.events)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/healthz", self.healthz)
        return app

    def _authorized(self, request: web.Request) -> bool:
        if not self._secret:
            return True
        got = request.headers.get("Authorization", "").encode()
        return hmac.compare_digest(got, b"Bearer " + self._secret)

    async def events(self, request: web.Request) -> web.Response:
        # Lines logged while handling this request carry its id (X-Request-Id or a new one).
        context_id.set(request_id(request.headers.items()))
        if not self._authorized(request):
            return _reject("unauthorized", 401, "missing or wrong Authorization bearer secret")
        if request.content_length is not None and request.content_length > self.max_body_bytes:
            return _reject(
                "too_large", 413, f"body larger than {self.max_body_bytes} bytes"
            )
        body = bytearray()
        async for chunk in request.content.iter_chunked(64 * 1024):
            body += chunk
            if len(body) > self.max_body_bytes:
                return _reject(
                    "too_large", 413, f"body larger than {self.max_body_bytes} bytes"
                )
        try:
            parsed = parse_body(bytes(body))
        except EnvelopeError as exc:
            return _reject("malformed", 400, str(exc))
        source = request.remote or "-"
        for action, _why in parsed.ignored:
            metrics.EVENTS_RECEIVED.labels("webhook", action).inc()
        rejected = [{"index": i, "id": eid, "reason": why} for i, eid, why in parsed.rejected]
        if parsed.rejected and not parsed.pushes and not parsed.ignored:
            return _reject(
                "malformed", 400, "no usable event in the body", rejected=rejected
            )
        now = time.time()
        added = self.inbox.add_many(
            [
                InboxEvent(
                    id=p.event_id,
                    trigger=gateway_pb2.Run.TRIGGER_EVENT,
                    repository=p.repository,
                    tag=p.tag,
                    digest=p.digest,
                    received_at=now,
                    hosts=p.hosts,
                    media_type=p.media_type,
                )
                for p in parsed.pushes
            ]
        )
        for _ in parsed.pushes:
            metrics.EVENTS_RECEIVED.labels("webhook", "push").inc()
        if parsed.rejected:
            # Keep the good ones and answer 2xx: the registry would resend this body forever.
            metrics.EVENTS_REJECTED.labels("malformed_event").inc(len(parsed.rejected))
            log.warning(
                "webhook from %s: %d malformed event(s) dropped: %s",
                source,
                len(rejected),
                rejected[:5],
            )
        return web.json_response(
            {
                "accepted": added.count(True),
                "duplicates": added.count(False),
                "ignored": len(parsed.ignored),
                "rejected": rejected,
            }
        )

    async def metrics(self, _request: web.Request) -> web.Response:
        self.inbox.refresh_depth()
        return web.Response(
            body=generate_latest(metrics.REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def healthz(self, _request: web.Request) -> web.Response:
        doc: dict[str, object] = {
            "status": "ok",
            "inbox_depth": self.inbox.depth(),
            "events": self.inbox.counts(),
        }
        if self.health is not None:
            doc.update(self.health())
        return web.json_response(doc)


async def start_http(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve `app` on host:port (0 picks a free port); returns the runner and the port."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server  # aiohttp exposes the bound sockets only here
    sockets = getattr(server, "sockets", None) or []
    bound = sockets[0].getsockname()[1] if sockets else port
    return runner, int(bound)
