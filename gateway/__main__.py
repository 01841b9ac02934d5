"""`python -m gateway`: the gateway alone, talking to the other services over gRPC.

    python -m gateway --grpc-listen 127.0.0.1:50055 --http-listen 127.0.0.1:8080 --data DIR \
        --policy-address HOST:PORT --transfer-address HOST:PORT [--scanner-address HOST:PORT] \

The gateway reads source endpoints (manifest facts without a scanner, ApplyPolicy, Reconcile,
polls) through the transfer service's registry-read RPCs (transfer_service.remote): it holds
no endpoint credential, no key and no transfer data. --transfer-data/--secret-key-file (the
old read-only store over the transfer service's files) still work but are deprecated.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from grpc import aio

from gateway.http import ConfigError
from gateway.options import add_gateway_arguments, webhook_secret
from servicekit.runner import base_parser, run_until_signal
from servicekit.security import ServerSecurity, add_peer_arguments, add_security_arguments
from servicekit.server import start_server

log = logging.getLogger("gateway")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = base_parser("gateway", "image-mirror gateway (mirror.v1.GatewayService + webhooks)", 50055)
    add_gateway_arguments(p, "127.0.0.1:8080")
    p.add_argument("--policy-address", required=True, help="HOST:PORT of the policy service")
    p.add_argument("--transfer-address", required=True, help="HOST:PORT of the transfer service")
    p.add_argument("--scanner-address", default="", help="HOST:PORT of the scanner (optional)")
    p.add_argument(
        "--transfer-data",
        default="",
        help="DEPRECATED: read endpoints from the transfer service's data folder (read only) "
        "instead of through --transfer-address",
    )
    p.add_argument(
        "--secret-key-file",
        default="",
        help="DEPRECATED (with --transfer-data): the transfer service's secret key file",
    )
    add_security_arguments(p)
    add_peer_arguments(p)
    args = p.parse_args(argv)
    if args.inbox_concurrency < 1:
        p.error("--inbox-concurrency must be at least 1")
    return args


def open_resolver(transfer_data: str, key_file: str, transfer: aio.Channel) -> object:
    """Endpoint access through the transfer service's API; the deprecated read-only store over
    its files when --transfer-data is given."""
    if not transfer_data:
        from transfer_service.remote import RemoteEndpoints

        return RemoteEndpoints(transfer)
    log.warning(
        "--transfer-data/--secret-key-file are deprecated: the gateway then holds the transfer "
        "service's key; drop them to read endpoints through --transfer-address"
    )
    from transfer_service.endpoints import EndpointStore
    from transfer_service.secrets import load_secret_box

    data = Path(transfer_data)
    box = load_secret_box(Path(key_file) if key_file else data / "secret.key")
    return EndpointStore.open_readonly(data, box)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)

    async def start() -> Callable[[], Awaitable[None]]:
        from gateway.service import Gateway, GatewayConfig

        try:
            security = ServerSecurity.from_args(args)
        except (ValueError, OSError) as exc:
            raise SystemExit(f"gateway: {exc}") from exc
        # The same tokens the other services accept (file or MIRROR_ADMIN_TOKEN): outbound
        # calls carry the admin one, over TLS with --peer-ca (mTLS with --peer-cert/--peer-key).
        channels = [security.channel(args.policy_address)]
        # Dialled so that the largest manifest ReadManifest returns fits (the gateway reads
        # registries through the transfer service: transfer_service.remote).
        from transfer_service.remote import CHANNEL_OPTIONS

        channels.append(security.channel(args.transfer_address, CHANNEL_OPTIONS))
        scanner = security.channel(args.scanner_address) if args.scanner_address else None
        if scanner is not None:
            channels.append(scanner)
        gw = Gateway(
            GatewayConfig(
                data_dir=Path(args.data),
                webhook_secret=webhook_secret(args),
                notify_urls=args.notify_url,
                concurrency=args.inbox_concurrency,
                reconcile_interval_s=args.reconcile_interval,
                max_hops=args.max_hops,
            ),
            channels[0],
            channels[1],
            scanner,
            open_resolver(  # type: ignore[arg-type]
                args.transfer_data, args.secret_key_file, channels[1]
            ),
        )
        try:
            http_port = await gw.start_http(args.http_listen)
        except (ConfigError, OSError) as exc:
            await gw.stop()
            raise SystemExit(f"gateway: {exc}") from exc
        server = await start_server(
            [gw.servicer], args.grpc_listen, tls=security.tls, interceptors=security.interceptors
        )
        security.warn_if_exposed(args.grpc_listen)
        await gw.start()
        host = args.http_listen.rsplit(":", 1)[0]
        print(
            f"gateway listening on port {server.port}; webhook http://{host}:{http_port}/events",
            flush=True,
        )

        async def stop() -> None:
            await server.stop()
            await gw.stop()
            for ch in channels:
                await ch.close()

        return stop

    run_until_signal(args, start)


if __name__ == "__main__":
    main()
