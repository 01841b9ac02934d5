"""RuleWorkers: jobs in killable child processes with a deadline, a memory ceiling and a
bounded number at once; the results, exceptions and refusals they come back with."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from multiprocessing import forkserver

import grpc
import psutil
import pytest

from policy_service.rules.guard import RuleGuard
from policy_service.rules.isolation import (
    OverDeadline,
    Overloaded,
    OverMemory,
    RuleWorkers,
)
from servicekit import errors, paging


@pytest.fixture
async def workers() -> AsyncIterator[RuleWorkers]:
    w = RuleWorkers(concurrency=2, deadline=3.0, memory_bytes=64 << 20)
    yield w
    w.close()


def _rule_jobs_alive() -> list[psutil.Process]:
    """Rule jobs still running: the live children of this process's fork server."""
    pid = forkserver._forkserver._forkserver_pid  # type: ignore[attr-defined]
    if pid is None:
        return []
    out = []
    for p in psutil.Process(pid).children():
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def _wait_no_jobs(timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while _rule_jobs_alive():
        assert time.monotonic() < deadline, f"rule jobs still alive: {_rule_jobs_alive()}"
        time.sleep(0.05)


async def test_results_and_exceptions_come_back(workers: RuleWorkers) -> None:
    assert await workers.run(divmod, 7, 2) == (3, 1)
    with pytest.raises(ValueError, match="invalid literal"):
        await workers.run(int, "x")


async def test_api_errors_keep_their_code_and_violations_across_the_process(
    workers: RuleWorkers,
) -> None:
    with pytest.raises(errors.ApiError) as info:
        await workers.run(paging.page_size, -1)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.field_violations == [("page_size", "negative")]
    returned = await workers.run(errors.ApiError, grpc.StatusCode.RESOURCE_EXHAUSTED, "slow")
    assert (returned.code, returned.message) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "slow")


async def test_a_job_past_its_deadline_is_killed(workers: RuleWorkers) -> None:
    started = time.monotonic()
    with pytest.raises(OverDeadline, match="longer than 3 s"):
        await workers.run(time.sleep, 60)
    assert time.monotonic() - started < 6
    _wait_no_jobs()


async def test_a_job_over_its_memory_ceiling_is_stopped(workers: RuleWorkers) -> None:
    with pytest.raises(OverMemory, match="more than 64 MiB"):
        await workers.run(bytearray, 512 << 20)
    # the server's own memory did not carry it
    assert psutil.Process().memory_info().rss < 400 << 20


async def test_a_cancelled_call_kills_its_job(workers: RuleWorkers) -> None:
    task = asyncio.create_task(workers.run(time.sleep, 60))
    deadline = time.monotonic() + 5
    while not _rule_jobs_alive():
        assert time.monotonic() < deadline, "the job never started"
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    _wait_no_jobs(timeout=2.0)  # well before the 3 s deadline


async def test_no_free_slot_within_the_deadline_is_overloaded() -> None:
    w = RuleWorkers(concurrency=1, deadline=1.0)
    busy = asyncio.create_task(w.run(time.sleep, 0.8))
    await asyncio.sleep(0.3)  # the first job holds the only slot by now
    # the second may wait up to its deadline; the first frees the slot in time
    assert await w.run(divmod, 1, 1) == (1, 0)
    await busy
    w.close()
    w = RuleWorkers(concurrency=1, deadline=3.0, queue_wait=0.5)
    blocker = asyncio.create_task(w.run(time.sleep, 30))
    await asyncio.sleep(0.3)
    started = time.monotonic()
    with pytest.raises(Overloaded, match=r"all 1 rule workers stayed busy for 0\.5 s"):
        await w.run(divmod, 1, 1)
    assert time.monotonic() - started < 2.0
    with pytest.raises(OverDeadline):
        await blocker
    w.close()


async def test_guard_maps_refusals_to_resource_exhausted() -> None:
    guard = RuleGuard(rate="", deadline=1.0, memory_mb=32, workers=1, warm=False)
    with pytest.raises(errors.ApiError) as info:
        await guard.run(time.sleep, 30)
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert info.value.reason == "RULE_DEADLINE_EXCEEDED"
    assert "took longer than 1 s" in info.value.message
    with pytest.raises(errors.ApiError) as info:
        await guard.run(bytearray, 256 << 20)
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert info.value.reason == "RULE_MEMORY_EXCEEDED"
    guard.close()
