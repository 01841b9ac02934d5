"""`python -m transfer_service --grpc-listen HOST:PORT --data DIR [...]`: the transfer service
alone on its own gRPC server (with reflection and health).

With `--database postgresql://...` any number of these processes share one job table: each
serves the whole API and runs jobs it claims (`--worker-id`, `--lease-seconds`); they must
share the secret key (MIRROR_SECRET_KEY or one `--key-file`).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Awaitable, Callable

from servicekit.runner import base_parser, run_until_signal
from servicekit.security import ServerSecurity, add_peer_arguments, add_security_arguments
from servicekit.server import start_server

log = logging.getLogger("transfer_service")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = base_parser("transfer_service", "Endpoints, TestConnection and transfer jobs.", 50052)
    p.add_argument("--key-file", default=None, help="Fernet key file (default DATA/secret.key; "
                   "created with mode 0600; $MIRROR_SECRET_KEY takes precedence)")
    p.add_argument("--spool-dir", default=None, help="where large blobs are buffered "
                   "(default DATA/spool)")
    p.add_argument("--spool-threshold", type=int, default=64 << 20,
                   help="blobs larger than this many bytes are buffered on disk")
    p.add_argument("--max-jobs", type=int, default=16, help="transfers run at once (default 16)")
    p.add_argument("--max-blobs", type=int, default=8, help="blobs copied at once (all jobs)")
    p.add_argument("--max-attempts", type=int, default=5,
                   help="quick attempts of a job that fails with a retryable error, before it "
                   "is rescheduled (registry unreachable) or fails")
    p.add_argument("--max-jobs-per-endpoint", type=int, default=None,
                   help="running transfers that read from one source endpoint "
                   "(default: half of --max-jobs, at least 1)")
    p.add_argument("--reschedule-base", type=float, default=60.0,
                   help="seconds before the first rescheduled attempt of a job whose registry "
                   "was unreachable; doubles each time")
    p.add_argument("--reschedule-max", type=float, default=6 * 3600.0,
                   help="longest wait between rescheduled attempts (seconds)")
    p.add_argument("--policy-address", default=None,
                   help="HOST:PORT of the policy service, asked before an endpoint is deleted "
                   "(without it DeleteEndpoint cannot check which policies use an endpoint)")
    p.add_argument("--idle-timeout", type=float, default=None,
                   help="seconds without a byte from a registry before a read is cut "
                   "(default 30)")
    p.add_argument("--retry-after-cap", type=float, default=None,
                   help="longest Retry-After waited for within an attempt (default 60 s); "
                   "a longer one reschedules the job for then")
    p.add_argument("--worker-id", default=None,
                   help="this worker's name in the job table, unique among the workers that "
                   "share a database (default: hostname-pid)")
    p.add_argument("--lease-seconds", type=float, default=30.0,
                   help="how long a job stays this worker's without a renewal (renewed every "
                   "second); a worker that dies loses its jobs to another after this long")
    add_security_arguments(p)
    # It dials the policy service (--policy-address) to check who uses an endpoint.
    add_peer_arguments(p)
    args = p.parse_args(argv)
    if args.lease_seconds < 1:
        p.error("--lease-seconds must be at least 1")
    if args.max_jobs < 1 or args.max_blobs < 1 or args.max_attempts < 1:
        p.error("--max-jobs, --max-blobs and --max-attempts must be at least 1")
    if args.max_jobs_per_endpoint is not None and args.max_jobs_per_endpoint < 1:
        p.error("--max-jobs-per-endpoint must be at least 1")
    if args.reschedule_base <= 0 or args.reschedule_max < args.reschedule_base:
        p.error("--reschedule-base must be positive and --reschedule-max at least as large")
    if args.spool_threshold < 0:
        p.error("--spool-threshold must not be negative")
    if (args.idle_timeout is not None and args.idle_timeout <= 0) or (
        args.retry_after_cap is not None and args.retry_after_cap < 0
    ):
        p.error("--idle-timeout must be positive and --retry-after-cap not negative")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)

    async def start() -> Callable[[], Awaitable[None]]:
        from transfer_service.servicer import TransferServicer

        security = ServerSecurity.from_args(args)
        policy_channel = (
            security.channel(args.policy_address) if args.policy_address else None
        )
        servicer = TransferServicer.open(
            args.data,
            key_file=args.key_file,
            spool_dir=args.spool_dir,
            spool_threshold=args.spool_threshold,
            max_jobs=args.max_jobs,
            max_concurrent_blobs=args.max_blobs,
            max_attempts=args.max_attempts,
            max_jobs_per_endpoint=args.max_jobs_per_endpoint,
            reschedule_base=args.reschedule_base,
            reschedule_max=args.reschedule_max,
            policy_channel=policy_channel,
            idle_timeout=args.idle_timeout,
            retry_after_cap=args.retry_after_cap,
            database=args.database,
            worker_id=args.worker_id or None,
            lease_seconds=args.lease_seconds,
        )
        server = await start_server(
            [servicer], args.grpc_listen, tls=security.tls, interceptors=security.interceptors
        )
        await servicer.start()
        # Tests and scripts started with port 0 read the chosen port from this line.
        print(f"transfer_service listening on port {server.port}", flush=True)

        async def stop() -> None:
            await server.stop()
            await servicer.stop()
            if policy_channel is not None:
                await policy_channel.close()

        return stop

    run_until_signal(args, start)


if __name__ == "__main__":
    main()
