"""`python -m gateway`: the gateway alone, talking to the other services over gRPC.

    python -m gateway --grpc-listen 127.0.0.1:50055 --http-listen 127.0.0.1:8080 --data DIR \
        --policy-address HOST:PORT --transfer-address HOST:PORT [--scanner-address HOST:PORT] \
        [--transfer-data DIR]

--transfer-data (the transfer service's data folder, read only; its key via --secret-key-file or
$MIRROR_SECRET_KEY) gives the gateway pull access to source endpoints: manifest facts without a
scanner, ApplyPolicy and Reconcile.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

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
        help="the transfer service's data folder (read only) for pulling from endpoints",
    )
    p.add_argument(
        "--secret-key-file",
        default="",
        help="the transfer service's secret key file (default TRANSFER_DATA/secret.key; "
        "$MIRROR_SECRET_KEY takes precedence)",
    )
    add_security_arguments(p)
    add_peer_arguments(p)
    args = p.parse_args(argv)
    if args.inbox_concurrency < 1:
        p.error("--inbox-concurrency must be at least 1")
    return args


def open_resolver(transfer_data: str, key_file: str) -> object | None:
    """A read-only endpoint store over the transfer service's data, or None."""
    if not transfer_data:
        return None
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
        channels.append(security.channel(args.transfer_address))
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
            open_resolver(args.transfer_data, args.secret_key_file),  # type: ignore[arg-type]
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
