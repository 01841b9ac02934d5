"""`python -m scanner --grpc-listen HOST:PORT --data DIR [--transfer-data DIR]`.

Endpoint access follows docs/INTERFACES.md ("Endpoint access for the scanner and gateway"):
the scanner opens the transfer service's endpoint store read-only with the same secret key
($MIRROR_SECRET_KEY or --secret-key-file), and pulls with the shared registry client.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from pathlib import Path

from scanner.layers import Limits
from scanner.servicer import ScanServicer
from servicekit.runner import base_parser, run_until_signal
from servicekit.security import ServerSecurity, add_security_arguments
from servicekit.server import start_server


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = base_parser("scanner", "image-mirror scanner (mirror.v1.ScanService)", 50054)
    p.add_argument("--transfer-data", default="",
                   help="the transfer service's data folder (read-only) for endpoint access")
    p.add_argument("--secret-key-file", default="",
                   help="key file of the transfer service (default TRANSFER_DATA/secret.key)")
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
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)

    async def start() -> Callable[[], Awaitable[None]]:
        endpoints = None
        if args.transfer_data:
            from transfer_service.endpoints import EndpointStore
            from transfer_service.secrets import load_secret_box

            key_file = Path(args.secret_key_file or Path(args.transfer_data) / "secret.key")
            endpoints = EndpointStore.open_readonly(args.transfer_data, load_secret_box(key_file))
        limits = Limits(max_file_bytes=args.max_file_mib << 20,
                        max_image_bytes=args.max_image_gib << 30,
                        max_package_records=args.max_package_records,
                        max_report_bytes=args.max_report_kib << 10)
        servicer = ScanServicer(args.data, endpoints, limits=limits,
                                import_roots=args.import_root)
        security = ServerSecurity.from_args(args)
        running = await start_server(
            [servicer], args.grpc_listen, tls=security.tls, interceptors=security.interceptors
        )
        return running.stop

    run_until_signal(args, start)


if __name__ == "__main__":
    main()
