"""`python -m console`: the web console on its own port, talking to the services by gRPC.

    python -m console --listen 127.0.0.1:8090 --address 127.0.0.1:50051
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging

from aiohttp import web
from mirror.channel import TlsOptions
from mirror.cmdline import log_level, version

from console.app import make_app
from console.config import ConsoleConfig

PROG = "mirror-console"
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"{PROG} (image-mirror) {version()}")
    p.add_argument("--listen", default="127.0.0.1:8090", help="HOST:PORT to serve pages on")
    p.add_argument("--address", default="127.0.0.1:50051", help="gRPC address of the services")
    p.add_argument(
        "--service-address", action="append", default=[], metavar="SERVICE=HOST:PORT",
        help="a service of a split deployment at its own address (policies, transfers, "
             "gateway, scanner); repeat for each; the others use --address",
    )
    p.add_argument("--ca", help="CA (PEM file) of the services' TLS certificate: dial with TLS")
    p.add_argument("--cert", help="client certificate (PEM) for mutual TLS")
    p.add_argument("--key", help="client key (PEM) for mutual TLS")
    p.add_argument("--session-idle", type=float, default=1800.0,
                   help="seconds without a request after which a sign-in ends")
    p.add_argument("--session-max", type=float, default=8 * 3600.0,
                   help="seconds after which a sign-in ends in any case")
    p.add_argument("--sign-in-attempts", type=int, default=10,
                   help="failed sign-ins per client address within --sign-in-window before "
                        "it must wait")
    p.add_argument("--sign-in-window", type=float, default=300.0, help="seconds")
    p.add_argument("--runs-per-page", type=int, default=50, help="runs on a policy's page")
    p.add_argument("--repositories-per-page", type=int, default=100,
                   help="repositories on one page of a registry's catalog")
    p.add_argument("--secure-cookie", action="store_true",
                   help="mark the session cookie Secure (pages served over HTTPS)")
    p.add_argument("--events-url", metavar="URL",
                   help="the gateway's HTTP base URL, shown as where registries send push "
                        "notifications (e.g. https://mirror.example:8080)")
    p.add_argument("--log-level", type=log_level, default="INFO",
                   help="debug, info, warning or error")
    return p.parse_args(argv)


SERVICES = ("policies", "transfers", "gateway", "scanner")


def service_addresses(values: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values:
        name, sep, address = value.partition("=")
        if not sep or name not in SERVICES or not address:
            raise SystemExit(f"--service-address {value!r}: expected SERVICE=HOST:PORT with "
                             f"SERVICE one of {', '.join(SERVICES)}")
        out[name] = address
    return out


def config_from_args(args: argparse.Namespace) -> ConsoleConfig:
    tls: bool | TlsOptions = False
    if args.ca or args.cert:
        tls = TlsOptions.from_files(args.ca, args.cert, args.key)
    return ConsoleConfig(
        address=args.address, addresses=service_addresses(args.service_address) or None,
        tls=tls, idle_timeout_s=args.session_idle,
        max_age_s=args.session_max, secure_cookie=args.secure_cookie,
        events_base=args.events_url.rstrip("/") if args.events_url else None,
        sign_in_attempts=args.sign_in_attempts, sign_in_window_s=args.sign_in_window,
        runs_per_page=args.runs_per_page, repositories_per_page=args.repositories_per_page,
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    host, _, port = args.listen.rpartition(":")
    try:
        config = config_from_args(args)
    except (OSError, ValueError) as exc:
        # One line, not a traceback: what could not be read and which option names it.
        raise SystemExit(f"{PROG}: cannot read the TLS files given by --ca/--cert/--key: "
                         f"{exc}") from None

    async def serve() -> None:
        runner = web.AppRunner(make_app(config), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host.strip("[]") or "127.0.0.1", int(port))
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            if exc.errno == errno.EADDRINUSE:
                raise SystemExit(f"{PROG}: cannot listen on {args.listen}: address in use "
                                 "(is another console running? choose another port with "
                                 "--listen)") from None
            raise SystemExit(f"{PROG}: cannot listen on {args.listen}: {exc.strerror}") from None
        print(f"console ready on http://{args.listen}/", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


if __name__ == "__main__":
    main()
