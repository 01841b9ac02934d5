"""`python -m policy_service --grpc-listen HOST:PORT --data DIR [--database URL]
[--transfer-address HOST:PORT] [--max-vulnerability-age 7d] [--signature-wait 0s]`.

State lives in SQLite under --data, or with `--database postgresql://...` in that database's
schema "policy"; several processes may then serve the same database (policy_service.changes
keeps their in-memory copies consistent).

Without --transfer-address the checks that ask the transfer service (source endpoint, target
push permission) and the source migration of old policies are skipped: that mode is for
running the policy service alone (development, tests, benchmarks), never for production.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta

from policy_service.freshness import parse_age
from policy_service.push_check import GrpcPushChecker
from policy_service.servicer import PolicyServicer
from policy_service.store import PolicyStore
from servicekit.runner import base_parser, run_until_signal
from servicekit.security import ServerSecurity, add_peer_arguments, add_security_arguments
from servicekit.server import start_server

DEFAULT_PORT = 50052
log = logging.getLogger("policy_service")


def _age(text: str) -> timedelta:
    try:
        return parse_age(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _wait(text: str) -> timedelta:
    """A duration up to 24h; 0 (or 0s) means no wait."""
    if text.strip().lower() in ("0", "0s"):
        return timedelta(0)
    wait = _age(text)
    if wait > timedelta(hours=24):
        raise argparse.ArgumentTypeError(f"{text!r}: at most 24h")
    return wait


def main(argv: list[str] | None = None) -> None:
    parser = base_parser(
        "policy_service", "image-mirror policy service (mirror.v1.PolicyService)", DEFAULT_PORT
    )
    parser.add_argument(
        "--transfer-address",
        default="",
        help="HOST:PORT of the transfer service, asked whether policy targets are pushable; "
        "without it the check is skipped (only for running the policy service alone)",
    )
    parser.add_argument(
        "--max-vulnerability-age",
        type=_age,
        default="7d",
        help="rules reading vulnerabilities are blocked when the scanner's vulnerability data "
        "is older than this (e.g. 7d, 12h; default 7d)",
    )
    parser.add_argument(
        "--signature-wait",
        type=_wait,
        default="0s",
        help="how long an image with no signature waits for one under a policy whose rule "
        "reads signatures and that sets no signature_wait of its own (e.g. 10m; default 0s: "
        "decide at once)",
    )
    add_security_arguments(parser)
    add_peer_arguments(parser)
    args = parser.parse_args(argv)

    async def start() -> Callable[[], Awaitable[None]]:
        security = ServerSecurity.from_args(args)
        # Opening migrates: off the event loop, like every database call.
        store = await asyncio.to_thread(PolicyStore.open, args.data, args.database)
        channel = None
        if args.transfer_address:
            channel = security.channel(args.transfer_address)
            checker = GrpcPushChecker(channel)
        else:
            checker = None
            log.warning(
                "no --transfer-address: policy targets are NOT checked for push permission; "
                "use this only to run the policy service alone"
            )
        # Loading reads and compiles every stored policy: off the event loop too.
        servicer = await asyncio.to_thread(
            PolicyServicer, store, checker, max_vulnerability_age=args.max_vulnerability_age,
            signature_wait=args.signature_wait, tokens=security.tokens,
        )
        running = await start_server(
            [servicer], args.grpc_listen, tls=security.tls, interceptors=security.interceptors
        )
        await servicer.start()
        host = args.grpc_listen.rsplit(":", 1)[0]
        print(f"policy service listening on {host}:{running.port}", flush=True)

        async def stop() -> None:
            await servicer.stop()
            await running.stop()
            if channel is not None:
                await channel.close()
            store.close()

        return stop

    run_until_signal(args, start)


if __name__ == "__main__":
    main()
