"""`python -m stack.router`: one gRPC address in front of a split deployment.

    python -m stack.router --grpc-listen 0.0.0.0:50050 --policy policy:50051 \
        --transfer transfer-1:50052,transfer-2:50052 --scanner scanner:50054 \
        --gateway gateway-1:50055 --gateway gateway-2:50055 \
        [--http-listen 0.0.0.0:8080 --gateway-http http://gateway-1:8080 ...]

Each call is forwarded by its service name (`/mirror.v1.PolicyService/...` to --policy, and so
on) as raw bytes, streams included, with the caller's metadata (its bearer token): the router
decodes nothing and authorizes nothing, each backend checks the token as it would if called
directly. It serves reflection (every forwarded service, from the generated descriptors) and
health of its own ("" while it runs; each service's as its backends report it), so mirrorctl,
the SDK and grpcurl need one --address. TLS: --tls-cert/--key
(and --tls-client-ca) for its port; --peer-ca/--peer-cert/--peer-key to dial the backends.

Replicas (issue 11): a service flag takes several addresses (repeated or comma-separated), and
one name may resolve to several (a DNS name with one record per replica: each channel balances
round-robin over what it resolves). Calls go round-robin to the replicas whose health service
says SERVING and whose connection is not failing, so a replica that dies stops getting calls
within one failed call or one health check (2 s). Every replica of a service serves every
call (they share one PostgreSQL database), so any choice is right.

With --http-listen it is also the one webhook address of the gateways: POST /events and
/events/ENDPOINT are forwarded to a --gateway-http replica round-robin, on to the next when
one cannot be reached (the inbox keeps an event once by its id, so a retried body is safe).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import grpc
from aiohttp import web
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import HealthServicer
from mirror.v1 import gateway_pb2, policy_pb2, scan_pb2, transfer_pb2

from servicekit.request_log import RequestLogInterceptor
from servicekit.runner import base_parser, run_until_signal
from servicekit.security import PeerTls, ServerSecurity, add_peer_arguments, add_security_arguments
from servicekit.server import MAX_MESSAGE_BYTES, start_server

log = logging.getLogger("stack.router")

# Which flag names the backend of each service.
SERVICES = {
    "policy": policy_pb2.DESCRIPTOR.services_by_name["PolicyService"].full_name,
    "transfer": transfer_pb2.DESCRIPTOR.services_by_name["TransferService"].full_name,
    "scanner": scan_pb2.DESCRIPTOR.services_by_name["ScanService"].full_name,
    "gateway": gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name,
}
# Not forwarded: HTTP/2 and gRPC framing headers the backend call sets itself.
_HOP_HEADERS = frozenset({"user-agent", "content-type", "te", "grpc-timeout", "grpc-encoding",
                          "grpc-accept-encoding", ":authority"})
_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # A name that resolves to several replicas: spread over all, skip the unreachable ones.
    ("grpc.lb_policy_name", "round_robin"),
]
_FAILING = (grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.SHUTDOWN)


def _raw(data: bytes) -> bytes:
    return data


def backend_channel(address: str, peer: PeerTls | None) -> aio.Channel:
    """A channel to a backend that adds no token of its own (the caller's is passed on)."""
    if peer is None:
        return aio.insecure_channel(address, options=_CHANNEL_OPTIONS)
    return aio.secure_channel(
        address, peer.credentials(), options=[*_CHANNEL_OPTIONS, *peer.options()]
    )


def _forwarded_metadata(context: aio.ServicerContext) -> list[tuple[str, Any]]:
    return [
        (k, v) for k, v in (context.invocation_metadata() or ())
        if k not in _HOP_HEADERS and not k.startswith(":")
    ]


def split_addresses(values: list[str]) -> list[str]:
    """HOST:PORT values of a repeated, comma-separated flag, in order, each once."""
    out: list[str] = []
    for value in values:
        for part in value.split(","):
            part = part.strip()
            if part and part not in out:
                out.append(part)
    return out


class Backends:
    """The replicas of one service: one channel each, picked round-robin among the healthy."""

    def __init__(self, addresses: list[str], peer: PeerTls | None) -> None:
        if not addresses:
            raise ValueError("a service needs at least one backend address")
        self.addresses = list(addresses)
        self.channels = [backend_channel(a, peer) for a in self.addresses]
        # The last health answer of each (None: not asked yet); a failed call clears it.
        self.serving: list[bool | None] = [None] * len(self.channels)
        self._next = 0

    def pick(self) -> int:
        """The index of the replica for the next call: round-robin over those that said
        SERVING and whose connection is not failing; else over those not failing; else all."""
        n = len(self.channels)
        if n == 1:
            return 0
        states = [c.get_state(try_to_connect=True) for c in self.channels]
        ok = [self.serving[i] is not False for i in range(n)]
        ready = grpc.ChannelConnectivity.READY
        # Connected first: a replica that just died has no connection (it is reconnecting)
        # before its next health check says so.
        tiers = (
            [i for i in range(n) if ok[i] and states[i] == ready],
            [i for i in range(n) if ok[i] and states[i] not in _FAILING],
            [i for i in range(n) if states[i] not in _FAILING],
        )
        candidates = next((t for t in tiers if t), list(range(n)))
        start = self._next
        self._next = (self._next + 1) % n
        # The first candidate at or after the rotating start: an even spread over them.
        return min(candidates, key=lambda i: (i - start) % n)

    def failed(self, index: int) -> None:
        """A call to this replica found it unreachable: skip it until it answers a check."""
        if len(self.channels) > 1:
            self.serving[index] = False

    async def close(self) -> None:
        for ch in self.channels:
            await ch.close()


@dataclass
class Forward:
    """Mountable: every method of `service_name` forwarded to one of `backends`, bytes for
    bytes."""

    service_name: str
    backends: Backends

    def mount(self, server: aio.Server) -> None:
        server.add_generic_rpc_handlers((_Handler(self.service_name, self.backends),))


class _Handler(grpc.GenericRpcHandler):
    def __init__(self, service: str, backends: Backends) -> None:
        self._prefix = f"/{service}/"
        self._backends = backends

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method: str = details.method  # type: ignore[attr-defined]
        if not method.startswith(self._prefix):
            return None
        # One shape serves all four kinds: on the wire a unary call is a stream of one.
        return grpc.stream_stream_rpc_method_handler(
            self._forwarder(method), request_deserializer=_raw, response_serializer=_raw
        )

    def _forwarder(
        self, method: str
    ) -> Callable[[AsyncIterator[bytes], aio.ServicerContext], AsyncIterator[bytes]]:
        backends = self._backends

        async def forward(
            requests: AsyncIterator[bytes], context: aio.ServicerContext
        ) -> AsyncIterator[bytes]:
            index = backends.pick()
            call = backends.channels[index].stream_stream(
                method, request_serializer=_raw, response_deserializer=_raw
            )(requests, metadata=_forwarded_metadata(context), timeout=context.time_remaining())
            try:
                async for reply in call:
                    yield reply
            except aio.AioRpcError as err:
                if err.code() == grpc.StatusCode.UNAVAILABLE:
                    backends.failed(index)  # the next calls go to another replica
                # The backend's status, message and details (grpc-status-details-bin) as sent.
                context.set_trailing_metadata(tuple(err.trailing_metadata() or ()))
                await context.abort(err.code(), err.details() or "")
            finally:
                call.cancel()  # the caller went away: so does the backend call

        return forward


async def _check(channel: aio.Channel, timeout: float) -> int:
    try:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=timeout
        )
        return int(reply.status)
    except aio.AioRpcError:
        return health_pb2.HealthCheckResponse.NOT_SERVING


async def mirror_health(
    health: HealthServicer, service: str, backends: Backends, stopping: asyncio.Event,
    every_s: float = 2.0,
) -> None:
    """Keep the router's health of `service` equal to its backends' (SERVING while any replica
    serves; NOT_SERVING while none can be reached) until `stopping` is set, so a client or
    probe asking the router sees the truth, and calls go to the replicas that serve. Check,
    not Watch: grpc's health servicer keeps a Watch's thread until the stream ends, which
    holds up a backend's shutdown while the router lives."""
    serving = health_pb2.HealthCheckResponse.SERVING
    while not stopping.is_set():
        statuses = await asyncio.gather(*(_check(ch, every_s) for ch in backends.channels))
        backends.serving = [st == serving for st in statuses]
        health.set(service, serving if serving in statuses else statuses[0])
        # Not synchronisation: the interval between two checks.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), every_s)


# Request headers the webhook forwarder does not pass on (one hop's, or recomputed).
_HTTP_HOP_HEADERS = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "upgrade",
                               "proxy-authorization", "trailer", "host", "content-length"})
# Larger than the gateway's own body limit, so the gateway answers an oversized body (413).
_WEBHOOK_MAX_BODY = 16 << 20


class WebhookForwarder:
    """POST /events and /events/{endpoint}, forwarded to one gateway replica of `urls`
    (round-robin; on to the next when one cannot be reached or breaks the connection)."""

    def __init__(self, urls: list[str], timeout_s: float = 30.0) -> None:
        self.urls = [u.rstrip("/") for u in urls]
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=2.0)
        self._next = 0
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=_WEBHOOK_MAX_BODY)
        app.router.add_post("/events", self.forward)
        app.router.add_post("/events/{endpoint}", self.forward)
        app.router.add_get("/healthz", self.healthz)
        return app

    async def start(self, listen: str) -> int:
        """Serve on HOST:PORT (port 0: a free one); returns the port."""
        self._session = aiohttp.ClientSession(timeout=self._timeout, auto_decompress=False)
        self._runner = web.AppRunner(self.make_app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        host, _, port = listen.rpartition(":")
        await web.TCPSite(self._runner, host.strip("[]") or "127.0.0.1", int(port)).start()
        return int(self._runner.addresses[0][1])  # the port chosen for 0

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "gateways": len(self.urls)})

    async def forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        body = await request.read()
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() not in _HTTP_HOP_HEADERS}
        remote = request.remote or ""
        prior = request.headers.get("X-Forwarded-For", "")
        headers["X-Forwarded-For"] = f"{prior}, {remote}" if prior else remote
        start = self._next
        self._next = (self._next + 1) % len(self.urls)
        errors: list[str] = []
        for k in range(len(self.urls)):
            url = self.urls[(start + k) % len(self.urls)]
            try:
                async with self._session.post(
                    url + request.path_qs, data=body, headers=headers, allow_redirects=False
                ) as up:
                    answer = await up.read()
                    out = web.Response(status=up.status, body=answer)
                    if up.content_type:
                        out.content_type = up.content_type
                    return out
            except (aiohttp.ClientError, TimeoutError) as exc:
                # Unreachable, or gone mid-request: the next replica gets the same body (the
                # inbox records an event once by its id, so a repeat is harmless).
                errors.append(f"{url}: {exc or type(exc).__name__}")
                log.warning("webhook not delivered to %s (%s); trying the next gateway", url,
                            exc or type(exc).__name__)
        return web.json_response(
            {"error": "no gateway reachable", "reason": "unavailable", "tried": errors},
            status=503,
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = base_parser("mirror-router", "one gRPC address for a split image-mirror", 50050)
    for flag in SERVICES:
        p.add_argument(f"--{flag}", required=True, action="append", metavar="HOST:PORT",
                       help=f"address of the {flag} service; several replicas: repeat the flag "
                       "or separate addresses with commas")
    p.add_argument("--http-listen", default="", metavar="HOST:PORT",
                   help="also forward registry webhooks (POST /events) here to the gateways "
                   "(needs --gateway-http)")
    p.add_argument("--gateway-http", action="append", default=[], metavar="URL",
                   help="http://HOST:PORT of a gateway replica's webhook port (repeatable)")
    add_security_arguments(p)
    add_peer_arguments(p)
    args = p.parse_args(argv)
    for flag in SERVICES:
        setattr(args, flag, split_addresses(getattr(args, flag)))
        if not getattr(args, flag):
            p.error(f"--{flag} needs at least one HOST:PORT")
    args.gateway_http = split_addresses(args.gateway_http)
    if bool(args.http_listen) != bool(args.gateway_http):
        p.error("--http-listen and --gateway-http go together")
    for url in args.gateway_http:
        if not url.startswith(("http://", "https://")):
            p.error(f"--gateway-http {url!r}: expected http://HOST:PORT")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)

    async def start() -> Callable[[], Awaitable[None]]:
        try:
            security = ServerSecurity.from_args(args)
        except (ValueError, OSError) as exc:
            raise SystemExit(f"mirror-router: {exc}") from exc
        backends = {flag: Backends(getattr(args, flag), security.peer) for flag in SERVICES}
        # No token check here: the backends authorize, with the caller's token.
        running = await start_server(
            [Forward(name, backends[flag]) for flag, name in SERVICES.items()],
            args.grpc_listen, tls=security.tls, interceptors=[RequestLogInterceptor()],
        )
        for name in SERVICES.values():
            # Unknown until its backend says (start_server marked every service SERVING).
            running.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        stopping = asyncio.Event()
        watchers = [
            asyncio.create_task(mirror_health(running.health, name, backends[flag], stopping))
            for flag, name in SERVICES.items()
        ]
        webhooks = WebhookForwarder(args.gateway_http) if args.http_listen else None
        line = f"mirror-router listening on port {running.port}"
        if webhooks is not None:
            http_port = await webhooks.start(args.http_listen)
            line += f"; webhook port {http_port}"
        print(line, flush=True)

        async def stop() -> None:
            stopping.set()
            for task in watchers:
                task.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
            if webhooks is not None:
                await webhooks.stop()
            await running.stop()
            for b in backends.values():
                await b.close()

        return stop

    run_until_signal(args, start)


if __name__ == "__main__":
    main()
