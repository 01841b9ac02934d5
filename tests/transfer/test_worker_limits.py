"""Registry limits across transfer workers: workers on one PostgreSQL database count each
other by heartbeat and divide an endpoint's explicit limits among the live ones."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.fernet import Fernet

from transfer_service.endpoints import EndpointRecord
from transfer_service.servicer import TransferServicer


async def _until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        await asyncio.sleep(0.05)


async def test_live_workers_divide_an_endpoints_limits(pg_url: str, tmp_path: Path) -> None:
    key = tmp_path / "secret.key"
    key.write_bytes(Fernet.generate_key())
    key.chmod(0o600)
    a, b = (
        TransferServicer.open(tmp_path / name, database=pg_url, key_file=key, worker_id=name,
                              lease_seconds=3)
        for name in ("a", "b")
    )
    running = [a, b]
    try:
        await a.start()
        await a.endpoints.db.run(a.endpoints.create, EndpointRecord(
            name="lim", url="http://127.0.0.1:5999", max_concurrency=8, requests_per_second=4.0,
        ))
        assert a.endpoints.live_workers == 1
        await b.start()
        await _until(lambda: a.endpoints.live_workers == b.endpoints.live_workers == 2, 10,
                     "both workers count two")
        for s in (a, b):
            cfg = await s.endpoints.db.run(s.endpoints.config_for, "lim")
            assert (cfg.max_concurrency, cfg.requests_per_second) == (4, 2.0)
        # A worker that stops leaves the count at once: the other takes the whole budget.
        await b.stop()
        running.remove(b)
        await _until(lambda: a.endpoints.live_workers == 1, 10, "one worker left")
        cfg = await a.endpoints.db.run(a.endpoints.config_for, "lim")
        assert (cfg.max_concurrency, cfg.requests_per_second) == (8, 4.0)
    finally:
        for s in running:
            await s.stop()
