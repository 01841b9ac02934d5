"""`python -m scanner --grpc-listen HOST:PORT --data DIR [--transfer-address HOST:PORT]`.

Endpoint access follows docs/INTERFACES.md ("Endpoint access for the scanner and gateway"):
the scanner reads images through the transfer service's registry-read RPCs
(transfer_service.remote) with the admin token, over TLS with --peer-ca; it holds no endpoint
credential and no key. --transfer-data/--secret-key-file (the old read-only store over the
transfer service's files) still work but are deprecated.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from scanner.layers import Limits
from scanner.servicer import ScanServicer
from servicekit.runner import base_parser, run_until_signal
from servicekit.security import ServerSecurity, add_peer_arguments, add_security_arguments
from servicekit.server import start_server

log = logging.getLogger("scanner")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = base_parser("scanner", "image-mirror scanner (mirror.v1.ScanService)", 50054)
    p.add_argument("--transfer-address", default="",
                   help="HOST:PORT of the transfer service, through which images are read")
    p.add_argument("--transfer-data", default="",
                   help="DEPRECATED: read endpoints from the transfer service's data folder")
    p.add_argument("--secret-key-file", default="",
                   help="DEPRECATED (with --transfer-data): the transfer service's key file")
    p.add_argument("--import-root", action="append", default=[],
                   help="folder ImportVulnerabilities may read paths from (repeatable)")
    p.add_argument("--max-file-mib", type=int, default=16,
                   help="largest package database file accepted")
    p.add_argument("--max-image-gib", type=int, default=16,
                   help="most decompressed layer bytes read per image")
    p.add_argument("--max-package-records", type=int, default=Limits.max_package_records,
                   help="most package records parsed per image (more: 'scan too big')")
    p.add_argument("--max-report-kib", type=int, default=Limits.max_report_bytes >> 10,
                   help="largest scan report sent (the vulnerability list is cut to fit; "
                        "components that do not fit: 'scan too big')")
    add_security_arguments(p)
    add_peer_arguments(p)
    args = p.parse_args(argv)
    if args.transfer_address and args.transfer_data:
        p.error("--transfer-address and the deprecated --transfer-data exclude each other")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)

    async def start() -> Callable[[], Awaitable[None]]:
        security = ServerSecurity.from_args(args)
        endpoints: object = None
        channel = None
        if args.transfer_address:
            from transfer_service.remote import CHANNEL_OPTIONS, RemoteEndpoints

            channel = security.channel(args.transfer_address, CHANNEL_OPTIONS)
            endpoints = RemoteEndpoints(channel)
        elif args.transfer_data:
            log.warning("--transfer-data/--secret-key-file are deprecated: the scanner then "
                        "holds the transfer service's key; use --transfer-address")
            from transfer_service.endpoints import EndpointStore
            from transfer_service.secrets import load_secret_box

            key_file = Path(args.secret_key_file or Path(args.transfer_data) / "secret.key")
            endpoints = EndpointStore.open_readonly(args.transfer_data, load_secret_box(key_file))
        limits = Limits(max_file_bytes=args.max_file_mib << 20,
                        max_image_bytes=args.max_image_gib << 30,
                        max_package_records=args.max_package_records,
                        max_report_bytes=args.max_report_kib << 10)
        servicer = ScanServicer(args.data, endpoints,  # type: ignore[arg-type]
                                limits=limits, import_roots=args.import_root)
        running = await start_server(
            [servicer], args.grpc_listen, tls=security.tls, interceptors=security.interceptors
        )

        async def stop() -> None:
            await running.stop()
            if channel is not None:
                await channel.close()

        return stop

    run_until_signal(args, start)


if __name__ == "__main__":
    main()
