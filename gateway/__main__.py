"""`python -m gateway`: the gateway alone, talking to the other services over gRPC.

    python -m gateway --grpc-listen 127.0.0.1:50055 --http-listen 127.0.0.1:8080 --data DIR \
        --policy-address HOST:PORT --transfer-address HOST:PORT [--scanner-address HOST:PORT] \

The gateway reads source endpoints (manifest facts without a scanner, ApplyPolicy, Reconcile,
polls) through the transfer service's registry-read RPCs (transfer_service.remote): it holds
no endpoint credential, no key of the transfer service and none of its data.

Replicas: run several with the same `--database postgresql://...` (each its own --data) and
one webhook address in front of them; see gateway/README.md ("Replicas").
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from gateway.http import ConfigError
from gateway.leases import DEFAULT_LEASE_S, default_replica_id
from gateway.options import add_gateway_arguments, webhook_secret
from servicekit.runner import base_parser, run_until_signal
from servicekit.security import ServerSecurity, add_peer_arguments, add_security_arguments
from servicekit.server import start_server

log = logging.getLogger("gateway")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = base_parser("gateway", "image-mirror gateway (mirror.v1.GatewayService + webhooks)", 50055)
    add_gateway_arguments(p, "127.0.0.1:8080")
    p.add_argument("--policy-address", required=True, help="HOST:PORT of the policy service")
    p.add_argument(
        "--transfer-address",
        required=True,
        help="HOST:PORT of the transfer service (endpoints and registry reads go through it)",
    )
    p.add_argument("--scanner-address", default="", help="HOST:PORT of the scanner (optional)")
    r = p.add_argument_group("replicas (several gateways on one --database)")
    r.add_argument(
        "--replica-id",
        default=default_replica_id(),
        help="this replica's name in claims and leases, unique among the live replicas "
        "(default: HOSTNAME-PID)",
    )
    r.add_argument(
        "--lease-seconds",
        type=float,
        default=DEFAULT_LEASE_S,
        help="how long a claim on an event or run, or a duty such as reconcile, lasts "
        "unless renewed: a replica that dies has its work taken over within this time "
        f"(default {DEFAULT_LEASE_S:g})",
    )
    r.add_argument(
        "--subscription-key-file",
        default="",
        help="Fernet key file of subscription secrets (default DATA/secret.key, made when "
        "needed); replicas need the same one ($MIRROR_SECRET_KEY works too)",
    )
    # Removed (issue 11: each service owns its data): refused with a word on what replaces them.
    for gone in ("--transfer-data", "--secret-key-file"):
        p.add_argument(gone, default=None, help=argparse.SUPPRESS)
    add_security_arguments(p)
    add_peer_arguments(p)
    args = p.parse_args(argv)
    if args.transfer_data is not None or args.secret_key_file is not None:
        p.error(
            "--transfer-data and --secret-key-file were removed: the gateway reads endpoints "
            "and registries through the transfer service (--transfer-address) and holds none "
            "of its data or keys"
        )
    if args.inbox_concurrency < 1:
        p.error("--inbox-concurrency must be at least 1")
    if args.lease_seconds < 0.5:
        p.error("--lease-seconds must be at least 0.5")
    if not args.replica_id.strip():
        p.error("--replica-id must not be empty")
    return args


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
        from transfer_service.remote import CHANNEL_OPTIONS, RemoteEndpoints

        channels.append(security.channel(args.transfer_address, CHANNEL_OPTIONS))
        scanner = security.channel(args.scanner_address) if args.scanner_address else None
        if scanner is not None:
            channels.append(scanner)
        gw = await Gateway.open(
            GatewayConfig(
                data_dir=Path(args.data),
                webhook_secret=webhook_secret(args),
                notify_urls=args.notify_url,
                concurrency=args.inbox_concurrency,
                reconcile_interval_s=args.reconcile_interval,
                max_hops=args.max_hops,
                database=args.database,
                replica_id=args.replica_id.strip(),
                lease_s=args.lease_seconds,
                subscription_key_file=(
                    Path(args.subscription_key_file) if args.subscription_key_file else None
                ),
            ),
            channels[0],
            channels[1],
            scanner,
            RemoteEndpoints(channels[1]),
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
