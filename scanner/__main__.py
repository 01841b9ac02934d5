"""`python -m scanner --grpc-listen HOST:PORT --data DIR [--database URL]
[--transfer-address HOST:PORT]`.

Endpoint access follows docs/INTERFACES.md ("Endpoint access for the scanner and gateway"):
the scanner reads images only through the transfer service's registry-read RPCs
(transfer_service.remote) with the admin token, over TLS with --peer-ca; it holds no endpoint
credential, no key and opens no other service's database. Without --transfer-address it
serves reports and imports, and refuses ScanImage.

Reports and vulnerability data live in SQLite under --data, or with `--database
postgresql://...` in that database's schema "scanner".
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Awaitable, Callable

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
    return p.parse_args(argv)


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
        else:
            log.warning("no --transfer-address: ScanImage is refused (reports and imports "
                        "are served)")
        limits = Limits(max_file_bytes=args.max_file_mib << 20,
                        max_image_bytes=args.max_image_gib << 30,
                        max_package_records=args.max_package_records,
                        max_report_bytes=args.max_report_kib << 10)
        # Opening migrates the database: off the event loop.
        servicer = await asyncio.to_thread(
            ScanServicer, args.data, endpoints,  # type: ignore[arg-type]
            limits=limits, import_roots=args.import_root, database=args.database,
        )
        running = await start_server(
            [servicer], args.grpc_listen, tls=security.tls, interceptors=security.interceptors
        )
        host = args.grpc_listen.rsplit(":", 1)[0]
        print(f"scanner listening on {host}:{running.port}", flush=True)

        async def stop() -> None:
            await running.stop()
            if channel is not None:
                await channel.close()
            servicer.db.close()

        return stop

    run_until_signal(args, start)


if __name__ == "__main__":
    main()
