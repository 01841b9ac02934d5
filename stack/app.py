"""Assemble the embedded stack: policy, transfer, scanner and gateway servicers on one server."""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.service import Gateway, GatewayConfig
from servicekit.security import ServerSecurity
from servicekit.server import RunningServer, start_server

log = logging.getLogger("stack")


def resolve_listen(listen: str) -> tuple[str, int]:
    """HOST:PORT with port 0 replaced by a free port (the internal channels need it up front)."""
    host, _, port_s = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    port = int(port_s)
    if port == 0:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
    return host, port


def connect_host(host: str) -> str:
    """Where to dial a server bound to `host` from this machine."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


@dataclass
class StackConfig:
    data_dir: Path
    # postgresql://...: every service's state in its own schema of that database (policy,
    # transfer, gateway, scanner); "": SQLite files under data_dir (the embedded default).
    database: str = ""
    grpc_listen: str = "127.0.0.1:50051"
    http_listen: str = "127.0.0.1:8080"
    webhook_secret: str = ""
    notify_urls: list[str] = field(default_factory=list)
    inbox_concurrency: int = 8
    reconcile_interval_s: float = 300.0
    max_hops: int = 8
    scanner: bool = True
    transfer_options: dict[str, Any] = field(default_factory=dict)
    # Serve the web console at / on the HTTP port (it dials the gRPC port like any client).
    console: bool = True
    policy_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Stack:
    """A running stack; `stop()` stops everything it started."""

    grpc_address: str
    http_address: str
    data_dir: Path
    server: RunningServer
    gateway: Gateway
    closers: list[Any]
    services: list[str]

    @property
    def webhook_url(self) -> str:
        return f"http://{self.http_address}/events"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.http_address}/metrics"

    async def stop(self) -> None:
        await self.server.stop()
        for c in reversed(self.closers):
            await c()


def _scanner_servicer(data_dir: Path, endpoints: Any, database: str) -> Any | None:
    """The scanner's servicer (None when the scanner cannot be loaded)."""
    try:
        from scanner.servicer import ScanServicer
    except ImportError as exc:
        log.warning("scanner not available (%s): rules needing scan facts will not match", exc)
        return None
    return ScanServicer(data_dir, endpoints, database=database)


def _console_mount(security: ServerSecurity, address: str) -> Any:
    """Adds the web console's pages to the HTTP application; it calls the gRPC port with the
    signed-in user's own token, over TLS with the peer CA when the port uses TLS."""
    from mirror.channel import TlsOptions

    from console.app import mount
    from console.config import ConsoleConfig

    peer = security.peer
    tls: bool | TlsOptions = False
    if peer is not None:
        tls = TlsOptions(peer.ca_pem, peer.cert_pem, peer.key_pem, peer.server_name)
    # The gateway's webhooks share the console's origin.
    return lambda app: mount(app, ConsoleConfig(address=address, tls=tls, events_base=""))


async def start_stack(cfg: StackConfig, security: ServerSecurity | None = None) -> Stack:
    """Open every service's state (under DATA, or in cfg.database) and serve them all on one
    gRPC server."""
    from policy_service.push_check import GrpcPushChecker
    from policy_service.servicer import PolicyServicer
    from policy_service.store import PolicyStore
    from transfer_service.servicer import TransferServicer

    security = security or ServerSecurity()
    data = Path(cfg.data_dir).resolve()
    data.mkdir(parents=True, exist_ok=True)
    host, port = resolve_listen(cfg.grpc_listen)
    self_address = f"{connect_host(host)}:{port}"
    channel = security.channel(self_address)  # TLS and token as configured for peers
    closers: list[Any] = [channel.close]

    # The transfer service asks the policy service (on this server) before deleting endpoints.
    transfer = TransferServicer.open(
        data, database=cfg.database, policy_channel=channel, **cfg.transfer_options
    )
    closers.append(transfer.stop)
    store = PolicyStore.open(data, cfg.database)
    policy = PolicyServicer(
        store, GrpcPushChecker(channel), tokens=security.tokens, **cfg.policy_options
    )

    async def close_store() -> None:
        store.close()

    closers.append(close_store)
    servicers: list[Any] = [policy, transfer]
    scanner = _scanner_servicer(data, transfer.endpoints, cfg.database) if cfg.scanner else None
    if scanner is not None:
        servicers.append(scanner)

        async def close_scanner() -> None:
            scanner.db.close()

        closers.append(close_scanner)
    gw = Gateway(
        GatewayConfig(
            data_dir=data,
            webhook_secret=cfg.webhook_secret,
            notify_urls=cfg.notify_urls,
            concurrency=cfg.inbox_concurrency,
            reconcile_interval_s=cfg.reconcile_interval_s,
            max_hops=cfg.max_hops,
            database=cfg.database,
        ),
        policy_channel=channel,
        transfer_channel=channel,
        scanner_channel=channel if scanner is not None else None,
        resolver=transfer.endpoints,
    )
    if scanner is not None:
        # An imported scan report re-evaluates its image's undecided runs (issue 13, item 3).
        scanner.on_report = gw.runner.report_arrived
    servicers.append(gw.servicer)
    try:
        http_port = await gw.start_http(
            cfg.http_listen, _console_mount(security, self_address) if cfg.console else None
        )
        listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        server = await start_server(
            servicers, listen, tls=security.tls, interceptors=security.interceptors
        )
    except BaseException:
        await gw.stop()
        for c in reversed(closers):
            await c()
        raise
    await transfer.start()
    for s in servicers:
        start = getattr(s, "start", None)
        if s is not transfer and start is not None:
            await start()
    await gw.start()
    closers.append(gw.stop)
    http_host = cfg.http_listen.rpartition(":")[0] or "127.0.0.1"
    return Stack(
        grpc_address=self_address,
        http_address=f"{connect_host(http_host.strip('[]'))}:{http_port}",
        data_dir=data,
        server=server,
        gateway=gw,
        closers=closers,
        services=server.services,
    )
