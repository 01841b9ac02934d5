"""Build a grpc.aio server with any set of servicers, reflection and health."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from servicekit.interceptors import ErrorInterceptor

log = logging.getLogger("servicekit.server")

MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class Mountable(Protocol):
    """A servicer that can be mounted on any gRPC server."""

    service_name: str

    def mount(self, server: aio.Server) -> None: ...


@dataclass
class TlsConfig:
    """Server certificate and key (PEM); a client CA makes the server require client certs."""

    cert_pem: bytes
    key_pem: bytes
    client_ca_pem: bytes | None = None


@dataclass
class RunningServer:
    server: aio.Server
    port: int
    health: health.HealthServicer
    services: list[str] = field(default_factory=list)

    async def stop(self, grace: float = 2.0) -> None:
        self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


async def start_server(
    servicers: Sequence[Mountable],
    listen: str,
    *,
    tls: TlsConfig | None = None,
    interceptors: Sequence[aio.ServerInterceptor] = (),
) -> RunningServer:
    """Start a server on `listen` (HOST:PORT, port 0 picks a free one) with every servicer."""
    server = aio.server(
        interceptors=[*interceptors, ErrorInterceptor()],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ],
    )
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = []
    for s in servicers:
        s.mount(server)
        names.append(s.service_name)
    reflection.enable_server_reflection(
        [
            *names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    if tls is None:
        port = server.add_insecure_port(listen)
    else:
        creds = grpc.ssl_server_credentials(
            [(tls.key_pem, tls.cert_pem)],
            root_certificates=tls.client_ca_pem,
            require_client_auth=tls.client_ca_pem is not None,
        )
        port = server.add_secure_port(listen, creds)
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    await server.start()
    for name in names:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    log.info("gRPC listening on %s (port %d): %s", listen, port, ", ".join(names))
    return RunningServer(server=server, port=port, health=health_servicer, services=names)


def service_full_name(file_descriptor: object, service: str) -> str:
    """Full name of a service declared in a generated *_pb2 module's DESCRIPTOR."""
    return file_descriptor.services_by_name[service].full_name  # type: ignore[attr-defined]
