"""The gateway's HTTP side (aiohttp): /events and /events/NAME (registry webhooks), /metrics,
/healthz."""

from __future__ import annotations

import dataclasses
import hmac
import ipaddress
import logging
import re
import time
from collections.abc import Callable

from aiohttp import web
from mirror.v1 import gateway_pb2
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.endpoints import EndpointDirectory
from gateway.inbox import DataVolumeFull, Inbox, InboxEvent
from gateway.webhook import EnvelopeError, parse_body
from gateway.webhook_auth import Verdict, WebhookVerifier
from servicekit import metrics
from servicekit.logs import context_id
from servicekit.request_log import request_id

log = logging.getLogger("gateway.http")

MAX_BODY_BYTES = 4 << 20
# The transfer service's endpoint name grammar; anything else cannot exist (404, no lookup).
ENDPOINT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


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


# At most this many per-event reasons are echoed in an answer (a 4 MiB body of bad events
# must not produce a bigger answer).
MAX_REASONS = 20


class WebhookApp:
    """Builds the aiohttp application; events go into the inbox before the 2xx answer.

    `POST /events` takes the shared secret and places events by their hosts; `POST
    /events/NAME` takes endpoint NAME's own webhook secret (checked by `verifier`) and places
    every event at NAME. An endpoint with a webhook secret gets events only the second way:
    events claiming its hosts on `/events` are refused and recorded as such (`directory` tells
    which endpoints have one).
    """

    def __init__(
        self,
        inbox: Inbox,
        secret: str = "",
        *,
        verifier: WebhookVerifier | None = None,
        directory: EndpointDirectory | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
        health: Callable[[], dict[str, object]] | None = None,
    ) -> None:
        self.inbox = inbox
        self._secret = secret.encode()
        self.verifier = verifier
        self.directory = directory
        self.max_body_bytes = max_body_bytes
        self.health = health

    def make_app(self) -> web.Application:
        # client_max_size is a backstop; the handler enforces the limit itself (413 with JSON).
        app = web.Application(client_max_size=self.max_body_bytes + 1024)
        app.router.add_post("/events", self.events)
        app.router.add_post("/events/{endpoint}", self.endpoint_events)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/healthz", self.healthz)
        return app

    def _authorized(self, request: web.Request) -> bool:
        if not self._secret:
            return True
        got = request.headers.get("Authorization", "").encode()
        return hmac.compare_digest(got, b"Bearer " + self._secret)

    async def events(self, request: web.Request) -> web.Response:
        """The shared path: events are placed later by their hosts."""
        # Lines logged while handling this request carry its id (X-Request-Id or a new one).
        context_id.set(request_id(request.headers.items()))
        if not self._authorized(request):
            return _reject("unauthorized", 401, "missing or wrong Authorization bearer secret")
        return await self._receive(request, endpoint="")

    async def endpoint_events(self, request: web.Request) -> web.Response:
        """An endpoint's own path: its webhook secret, every event placed at it."""
        context_id.set(request_id(request.headers.items()))
        name = request.match_info["endpoint"]
        if self.verifier is None:
            return _reject("unknown_endpoint", 404, "per-endpoint webhooks are not enabled")
        if not ENDPOINT_NAME.fullmatch(name):
            return _reject("unknown_endpoint", 404, "no such endpoint")
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return _reject(
                "unauthorized", 401, f"endpoint {name!r} needs 'Authorization: Bearer TOKEN'"
            )
        v = await self.verifier.verify(name, token.strip())
        if v.verdict is Verdict.UNKNOWN_ENDPOINT:
            return _reject("unknown_endpoint", 404, v.message)
        if v.verdict is Verdict.WRONG:
            log.warning("webhook for %r from %s refused: %s", name, request.remote, v.message)
            return _reject("unauthorized", 401, v.message)
        if v.verdict is Verdict.UNAVAILABLE:
            return _reject("unavailable", 503, v.message)
        return await self._receive(request, endpoint=name)

    async def _read_body(self, request: web.Request) -> bytes | None:
        """The body, or None when it is over the limit."""
        if request.content_length is not None and request.content_length > self.max_body_bytes:
            return None
        body = bytearray()
        async for chunk in request.content.iter_chunked(64 * 1024):
            body += chunk
            if len(body) > self.max_body_bytes:
                return None
        return bytes(body)

    async def _receive(self, request: web.Request, endpoint: str) -> web.Response:
        raw = await self._read_body(request)
        if raw is None:
            return _reject("too_large", 413, f"body larger than {self.max_body_bytes} bytes")
        try:
            parsed = parse_body(raw)
        except EnvelopeError as exc:
            return _reject("malformed", 400, str(exc))
        source = request.remote or "-"
        for action, _why in parsed.ignored:
            metrics.EVENTS_RECEIVED.labels("webhook", action).inc()
        rejected = [{"index": i, "id": eid, "reason": why} for i, eid, why in parsed.rejected]
        if parsed.rejected and not parsed.pushes and not parsed.ignored:
            return _reject(
                "malformed",
                400,
                "no usable event in the body",
                rejected=rejected[:MAX_REASONS],
                rejected_count=len(rejected),
            )
        now = time.time()
        events = [
            InboxEvent(
                id=p.event_id,
                trigger=gateway_pb2.Run.TRIGGER_EVENT,
                repository=p.repository,
                tag=p.tag,
                digest=p.digest,
                received_at=now,
                endpoint=endpoint,
                hosts=p.hosts,
                media_type=p.media_type,
            )
            for p in parsed.pushes
        ]
        refused: list[InboxEvent] = []
        if not endpoint:
            events, refused = await self._split_claims(events)
        try:
            added = await self.inbox.add(events) if events else []
            if refused:
                await self.inbox.db.run(self.inbox.add_refused, refused)
        except DataVolumeFull as exc:
            # Not acknowledged: the registry keeps the event and retries.
            log.error("webhook from %s not recorded: %s", source, exc.message)
            return _reject("no_space", 503, exc.message)
        for _ in events:
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
        refused_doc = [{"id": e.id, "reason": e.message} for e in refused[:MAX_REASONS]]
        if refused:
            metrics.EVENTS_REJECTED.labels("needs_endpoint_token").inc(len(refused))
            log.warning(
                "webhook from %s: %d event(s) refused on the shared path: %s",
                source,
                len(refused),
                refused[0].message,
            )
            if not events and not parsed.ignored:
                return web.json_response(
                    {
                        "error": refused[0].message,
                        "reason": "needs_endpoint_token",
                        "refused": refused_doc,
                    },
                    status=403,
                )
        return web.json_response(
            {
                "accepted": added.count(True),
                "duplicates": added.count(False),
                "ignored": len(parsed.ignored),
                "rejected": rejected[:MAX_REASONS],
                "refused": refused_doc,
            }
        )

    async def _split_claims(
        self, events: list[InboxEvent]
    ) -> tuple[list[InboxEvent], list[InboxEvent]]:
        """(accepted, refused): events on the shared path that claim the hosts of an endpoint
        with a webhook secret are refused (anyone with the shared secret could forge them)."""
        if self.directory is None or not events:
            return events, []
        accepted, refused = [], []
        for e in events:
            try:
                # A miss re-reads the endpoint list: an endpoint created a moment ago with a
                # webhook secret is seen (the refusal is recorded here, not left to the worker).
                ep = await self.directory.match(e.hosts, miss_max_age_s=0.0)
            except Exception as exc:
                # Accept: the worker places by host only onto endpoints without a webhook
                # secret, so the check still holds when it acts; the event is not lost.
                log.warning("cannot list endpoints to check webhook claims: %s", exc)
                return events, []
            if ep is not None and ep.has_webhook_secret:
                why = (
                    f"endpoint {ep.name!r} has a webhook secret: its events are accepted only "
                    f"on /events/{ep.name} with its token"
                )
                refused.append(dataclasses.replace(e, message=why))
            else:
                accepted.append(e)
        return accepted, refused

    async def metrics(self, _request: web.Request) -> web.Response:
        await self.inbox.db.run(self.inbox.refresh_depth)
        return web.Response(
            body=generate_latest(metrics.REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def healthz(self, _request: web.Request) -> web.Response:
        doc: dict[str, object] = {
            "status": "ok",
            "inbox_depth": await self.inbox.db.run(self.inbox.depth),
            "events": await self.inbox.db.run(self.inbox.counts),
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
