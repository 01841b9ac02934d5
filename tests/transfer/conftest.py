"""Fixtures: the transfer service served on a real grpc.aio server (see transfer_support), and
transfer workers as processes on one PostgreSQL database (see worker_processes)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from grpc import aio
from mirror.v1 import transfer_pb2_grpc

from servicekit.server import start_server
from tests.transfer.transfer_support import Served, ServeFn, stop_served
from tests.transfer.worker_processes import StartWorkers, WorkerProcess
from transfer_service.endpoints import EndpointStore
from transfer_service.jobs import Journal
from transfer_service.schema import open_database
from transfer_service.secrets import SecretBox
from transfer_service.servicer import TransferServicer
from transfer_service.worker import Worker


@pytest.fixture
async def endpoints_only(tmp_path: Path) -> AsyncIterator[Served]:
    """The servicer without a running worker (endpoint and TestConnection RPCs only)."""
    data = tmp_path / "data"
    db = open_database(data)
    store = EndpointStore(db, SecretBox([Fernet.generate_key()]))
    journal = Journal(db)
    servicer = TransferServicer(store, journal, Worker(journal, store, engine=None))
    server = await start_server([servicer], "127.0.0.1:0")
    channel = aio.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        stub = transfer_pb2_grpc.TransferServiceStub(channel)
        yield Served(servicer, server, channel, stub, data)
    finally:
        await channel.close()
        await server.stop(0)
        db.close()


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[ServeFn]:
    """Start the full service (TransferServicer.open + worker) on DATA; call again to restart."""
    running: list[Served] = []

    async def make(data: Path | None = None, **kw: Any) -> Served:
        data = data or tmp_path / "data"
        kw.setdefault("backoff_base", 0.05)
        kw.setdefault("progress_interval", 0.2)
        servicer = TransferServicer.open(data, **kw)
        server = await start_server([servicer], "127.0.0.1:0")
        await servicer.start()
        channel = aio.insecure_channel(f"127.0.0.1:{server.port}")
        s = Served(servicer, server, channel, transfer_pb2_grpc.TransferServiceStub(channel), data)
        running.append(s)
        return s

    yield make
    for s in running:
        await stop_served(s)


@pytest.fixture
def start_workers(tmp_path: Path, pg_url: str) -> Iterator[StartWorkers]:
    """`start_workers(n, *extra_args)`: n workers on the test's PostgreSQL database, ready."""
    key = Fernet.generate_key().decode()
    started: list[WorkerProcess] = []

    def make(n: int, *extra: str) -> list[WorkerProcess]:
        batch = []
        for _ in range(n):
            i = len(started)
            w = WorkerProcess(f"w{i}", pg_url, tmp_path / f"data-w{i}",
                              tmp_path / f"w{i}.log", key, *extra)
            started.append(w)
            batch.append(w)
        for w in batch:
            w.wait_ready()
        return batch

    yield make
    for w in started:
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait(10)
