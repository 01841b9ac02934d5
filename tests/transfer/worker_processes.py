"""Transfer workers as separate `python -m transfer_service` processes on one PostgreSQL job
table (each with its own data folder and gRPC port, all with one secret key)."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from grpc import aio
from mirror.v1 import common_pb2, transfer_pb2, transfer_pb2_grpc

from registry_testkit.ports import free_port
from stack.process import kill_process, stop_process

ROOT = Path(__file__).resolve().parents[2]
# Short leases: a dead worker's jobs move on within seconds.
LEASE_SECONDS = "3"
T = TypeVar("T")


class WorkerProcess:
    """One transfer service process: `worker_id`, its `stub`, its log file."""

    def __init__(
        self, worker_id: str, pg_url: str, data: Path, log: Path, key: str, *extra: str
    ) -> None:
        self.worker_id = worker_id
        self.log = log
        self.port = free_port()
        env = {**os.environ, "MIRROR_SECRET_KEY": key}
        with open(log, "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "transfer_service", "--database", pg_url,
                 "--data", str(data), "--grpc-listen", f"127.0.0.1:{self.port}",
                 "--worker-id", worker_id, "--lease-seconds", LEASE_SECONDS,
                 "--log-level", "INFO", *extra],
                cwd=ROOT, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, env=env,
            )
        self.channel = aio.insecure_channel(f"127.0.0.1:{self.port}")
        self.stub = transfer_pb2_grpc.TransferServiceStub(self.channel)

    def wait_ready(self) -> None:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        assert re.search(r"listening on port \d+", line), (
            f"{self.worker_id}: no port line: {line!r}; log: {self.log.read_text()[-3000:]}"
        )

    def log_text(self) -> str:
        return self.log.read_text()

    async def kill(self) -> None:
        kill_process(self.proc)
        await self.channel.close()

    async def stop(self) -> None:
        await self.channel.close()
        stop_process(self.proc, 10)


StartWorkers = Callable[..., list[WorkerProcess]]


def pg_rows(pg_url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Rows of a query on the workers' database (tables of the `transfer` schema)."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        return list(conn.execute(sql, params).fetchall())


def owner_of(pg_url: str, job_id: str) -> str | None:
    """The worker holding a running job's lease, None while nobody runs it."""
    rows = pg_rows(
        pg_url, "SELECT lease_owner FROM transfer.jobs WHERE id = %s AND state = 'running'",
        job_id,
    )
    return rows[0][0] if rows else None


async def until(
    fn: Callable[[], T | Awaitable[T | None] | None], timeout: float, what: str
) -> T:
    """fn()'s value once it is truthy, polled until a deadline."""
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if isinstance(got, Awaitable):
            got = await got
        if got:
            return got  # type: ignore[return-value]
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        await asyncio.sleep(0.05)


async def add_endpoints(stub: transfer_pb2_grpc.TransferServiceStub, **urls: str) -> None:
    for name, url in urls.items():
        await stub.CreateEndpoint(
            transfer_pb2.CreateEndpointRequest(endpoint=transfer_pb2.Endpoint(name=name, url=url))
        )


def start_request(ref: str, dst_repo: str, tag: str) -> transfer_pb2.StartTransferRequest:
    return transfer_pb2.StartTransferRequest(
        source=common_pb2.ImageLocation(endpoint="dev", repository="team/app", reference=ref),
        destination=transfer_pb2.TransferDestination(endpoint="qa", repository=dst_repo,
                                                     tag=tag),
    )


def puts_by_digest(entries: list[tuple[str, str, str]]) -> dict[str, int]:
    """Blob upload completions (PUT .../blobs/uploads/...?digest=D) per digest D."""
    out: dict[str, int] = {}
    for method, path, query in entries:
        m = re.search(r"(?:^|&)digest=([^&]+)", query)
        if method == "PUT" and "/blobs/uploads/" in path and m:
            d = m.group(1).replace("%3A", ":")
            out[d] = out.get(d, 0) + 1
    return out
