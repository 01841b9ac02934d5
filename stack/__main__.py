"""`mirror-stack`: the whole system in one process (policy, transfer, scanner, gateway).

    mirror-stack --data DIR --grpc-listen 127.0.0.1:50051 --http-listen 127.0.0.1:8080
    mirror-stack --data DIR --database postgresql://USER@HOST:PORT/DB   # or $MIRROR_DATABASE

State is SQLite under --data by default; with --database each service keeps its own schema in
that PostgreSQL database (policy, transfer, gateway, scanner), and --data keeps only the
process's lock and the transfer spool.
"""

from __future__ import annotations

import argparse
import logging
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

from gateway.http import ConfigError
from gateway.options import add_gateway_arguments, webhook_secret
from policy_service.__main__ import _age, _wait
from servicekit.db import is_postgres_url
from servicekit.runner import base_parser, run_until_signal
from servicekit.security import ServerSecurity, add_peer_arguments, add_security_arguments

log = logging.getLogger("stack")


def redacted_url(url: str) -> str:
    """The database URL as printed: any password replaced by ***."""
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = base_parser(
        "mirror-stack",
        "image-mirror in one process: every service on one gRPC server, webhooks on HTTP.",
        50051,
    )
    add_gateway_arguments(p, "127.0.0.1:8080")
    p.add_argument("--no-scanner", action="store_true", help="do not run the scanner")
    p.add_argument("--no-console", action="store_true",
                   help="do not serve the web console at / on the HTTP port (run "
                   "`python -m console` on its own, or none)")
    p.add_argument("--max-jobs", type=int, default=16, help="transfers run at once (default 16)")
    p.add_argument("--max-jobs-per-endpoint", type=int, default=None,
                   help="running transfers that read from one source endpoint "
                   "(default: half of --max-jobs, at least 1)")
    p.add_argument("--reschedule-base", type=float, default=60.0,
                   help="seconds before the first rescheduled attempt of a job whose registry "
                   "was unreachable; doubles each time")
    p.add_argument("--reschedule-max", type=float, default=6 * 3600.0,
                   help="longest wait between rescheduled attempts (seconds)")
    p.add_argument(
        "--max-vulnerability-age",
        type=_age,
        default="7d",
        help="rules reading vulnerabilities are blocked when the vulnerability data is older "
        "than this (e.g. 7d, 12h, 30s; default 7d)",
    )
    p.add_argument(
        "--signature-wait",
        type=_wait,
        default="0s",
        help="how long a run waits for a signature when its policy's rule reads signatures and "
        "the policy sets no signature_wait of its own (e.g. 10m; default 0s: decide at once)",
    )
    add_security_arguments(p)
    add_peer_arguments(p)
    args = p.parse_args(argv)
    if args.inbox_concurrency < 1 or args.max_jobs < 1:
        p.error("--inbox-concurrency and --max-jobs must be at least 1")
    if args.max_hops < 1:
        p.error("--max-hops must be at least 1")
    if args.database and not is_postgres_url(args.database):
        p.error("--database (or $MIRROR_DATABASE) must be a postgresql:// URL; SQLite files "
                "live under --data")
    if args.max_jobs_per_endpoint is not None and args.max_jobs_per_endpoint < 1:
        p.error("--max-jobs-per-endpoint must be at least 1")
    if args.reschedule_base <= 0 or args.reschedule_max < args.reschedule_base:
        p.error("--reschedule-base must be positive and --reschedule-max at least as large")
    # The services inside call each other through the gRPC port, so they dial it like a client.
    if args.tls_cert and not args.peer_ca:
        p.error("--tls-cert needs --peer-ca (the CA of the server certificate): the services "
                "inside the stack call each other through the gRPC port")
    if args.tls_client_ca and not args.peer_cert:
        p.error("--tls-client-ca needs --peer-cert/--peer-key (a client certificate the stack "
                "shows its own gRPC port)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)

    async def start() -> Callable[[], Awaitable[None]]:
        from stack.app import StackConfig, start_stack

        try:
            security = ServerSecurity.from_args(args)
            stack = await start_stack(
                StackConfig(
                    data_dir=Path(args.data),
                    database=args.database,
                    grpc_listen=args.grpc_listen,
                    http_listen=args.http_listen,
                    webhook_secret=webhook_secret(args),
                    notify_urls=args.notify_url,
                    inbox_concurrency=args.inbox_concurrency,
                    reconcile_interval_s=args.reconcile_interval,
                    max_hops=args.max_hops,
                    scanner=not args.no_scanner,
                    console=not args.no_console,
                    transfer_options={
                        "max_jobs": args.max_jobs,
                        "max_jobs_per_endpoint": args.max_jobs_per_endpoint,
                        "reschedule_base": args.reschedule_base,
                        "reschedule_max": args.reschedule_max,
                    },
                    policy_options={
                        "max_vulnerability_age": args.max_vulnerability_age,
                        "signature_wait": args.signature_wait,
                    },
                ),
                security,
            )
        except ConfigError as exc:
            raise SystemExit(f"mirror-stack: {exc}") from exc
        security.warn_if_exposed(args.grpc_listen)
        print(
            "mirror-stack is running\n"
            f"  gRPC      {stack.grpc_address}  ({', '.join(stack.services)})\n"
            f"  webhook   {stack.webhook_url}\n"
            f"  metrics   {stack.metrics_url}\n"
            f"  health    http://{stack.http_address}/healthz\n"
            + (f"  console   http://{stack.http_address}/\n" if not args.no_console else "")
            + f"  data      {stack.data_dir}\n"
            + (f"  database  {redacted_url(args.database)}\n" if args.database else "")
            + "mirror-stack ready",
            flush=True,
        )
        return stack.stop

    run_until_signal(args, start)


if __name__ == "__main__":
    main()
