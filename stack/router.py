"""`python -m stack.router`: one gRPC address in front of a split deployment.

    python -m stack.router --grpc-listen 0.0.0.0:50050 --policy policy:50051 \
        --transfer transfer:50052 --scanner scanner:50054 --gateway gateway:50055

Each call is forwarded by its service name (`/mirror.v1.PolicyService/...` to --policy, and so
on) as raw bytes, streams included, with the caller's metadata (its bearer token): the router
decodes nothing and authorizes nothing, each backend checks the token as it would if called
directly. It serves reflection (every forwarded service, from the generated descriptors) and
health of its own ("" while it runs; each service's as its backend reports it), so mirrorctl,
the SDK and grpcurl need one --address. TLS: --tls-cert/--key
(and --tls-client-ca) for its port; --peer-ca/--peer-cert/--peer-key to dial the backends.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
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
]


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


@dataclass
class Forward:
    """Mountable: every method of `service_name` forwarded to `channel`, bytes for bytes."""

    service_name: str
    channel: aio.Channel

    def mount(self, server: aio.Server) -> None:
        server.add_generic_rpc_handlers((_Handler(self.service_name, self.channel),))


class _Handler(grpc.GenericRpcHandler):
    def __init__(self, service: str, channel: aio.Channel) -> None:
        self._prefix = f"/{service}/"
        self._channel = channel

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
        channel = self._channel

        async def forward(
            requests: AsyncIterator[bytes], context: aio.ServicerContext
        ) -> AsyncIterator[bytes]:
            call = channel.stream_stream(method, request_serializer=_raw,
                                         response_deserializer=_raw)(
                requests, metadata=_forwarded_metadata(context),
                timeout=context.time_remaining(),
            )
            try:
                async for reply in call:
                    yield reply
            except aio.AioRpcError as err:
                # The backend's status, message and details (grpc-status-details-bin) as sent.
                context.set_trailing_metadata(tuple(err.trailing_metadata() or ()))
                await context.abort(err.code(), err.details() or "")
            finally:
                call.cancel()  # the caller went away: so does the backend call

        return forward


async def mirror_health(
    health: HealthServicer, service: str, channel: aio.Channel, stopping: asyncio.Event,
    every_s: float = 2.0,
) -> None:
    """Keep the router's health of `service` equal to its backend's (NOT_SERVING while the
    backend cannot be reached) until `stopping` is set, so a client or probe asking the router
    sees the truth. Check, not Watch: grpc's health servicer keeps a Watch's thread until the
    stream ends, which holds up a backend's shutdown while the router lives."""
    stub = health_pb2_grpc.HealthStub(channel)
    while not stopping.is_set():
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=every_s)
            health.set(service, reply.status)
        except aio.AioRpcError:
            health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        # Not synchronisation: the interval between two checks.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), every_s)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = base_parser("mirror-router", "one gRPC address for a split image-mirror", 50050)
    for flag in SERVICES:
        p.add_argument(f"--{flag}", required=True, metavar="HOST:PORT",
                       help=f"address of the {flag} service")
    add_security_arguments(p)
    add_peer_arguments(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)

    async def start() -> Callable[[], Awaitable[None]]:
        try:
            security = ServerSecurity.from_args(args)
        except (ValueError, OSError) as exc:
            raise SystemExit(f"mirror-router: {exc}") from exc
        channels = {flag: backend_channel(getattr(args, flag), security.peer)
                    for flag in SERVICES}
        # No token check here: the backends authorize, with the caller's token.
        running = await start_server(
            [Forward(name, channels[flag]) for flag, name in SERVICES.items()],
            args.grpc_listen, tls=security.tls, interceptors=[RequestLogInterceptor()],
        )
        for name in SERVICES.values():
            # Unknown until its backend says (start_server marked every service SERVING).
            running.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        stopping = asyncio.Event()
        watchers = [
            asyncio.create_task(mirror_health(running.health, name, channels[flag], stopping))
            for flag, name in SERVICES.items()
        ]
        print(f"mirror-router listening on port {running.port}", flush=True)

        async def stop() -> None:
            stopping.set()
            for task in watchers:
                task.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
            await running.stop()
            for ch in channels.values():
                await ch.close()

        return stop

    run_until_signal(args, start)


if __name__ == "__main__":
    main()
