"""Several transfer workers (separate processes) on one PostgreSQL job table: they share the
jobs and run each once, a SIGKILLed worker's job is finished by another after its lease
expires without uploading a blob twice, and a cancel and a watch served by a replica other
than the one running the job reach it. Real registries, fault proxies in front of them."""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import Callable

import pytest
from mirror.v1 import transfer_pb2

from registry_testkit.faultproxy import FaultProxy
from registry_testkit.images import ImageBuilder, digest_of, inspect_raw, push
from registry_testkit.registry import RegistryProcess
from tests.transfer.worker_processes import (
    LEASE_SECONDS,
    StartWorkers,
    WorkerProcess,
    add_endpoints,
    owner_of,
    pg_rows,
    puts_by_digest,
    start_request,
    until,
)

pytestmark = pytest.mark.registry

T = transfer_pb2.Transfer


async def watch_all(w: WorkerProcess, job_id: str, timeout: float = 60) -> list[T]:
    """Every snapshot WatchTransfer on `w` streams, until the stream ends."""
    seen: list[T] = []

    async def go() -> None:
        async for snap in w.stub.WatchTransfer(transfer_pb2.WatchTransferRequest(id=job_id)):
            seen.append(snap)

    await asyncio.wait_for(go(), timeout)
    return seen


async def test_three_workers_share_the_jobs_and_run_each_once(
    start_workers: StartWorkers,
    pg_url: str,
    registry: RegistryProcess,
    registry2: RegistryProcess,
    images: ImageBuilder,
    fault_proxy: Callable[[str], FaultProxy],
) -> None:
    img = images.image("1.0", layers=[60_000, 30_000])
    push(img, registry, "team/app")
    src = fault_proxy(registry.url)
    # Each job takes a second (its source manifest read), so they spread over the workers
    # and a watcher following the row of a job running elsewhere sees it running.
    src.delay(r"/manifests/", 1.0, method="GET")
    dst = fault_proxy(registry2.url)
    workers = start_workers(3, "--max-jobs", "1")
    await add_endpoints(workers[0].stub, dev=src.url, qa=dst.url)
    n = 9
    # Each replica serves the API: the jobs are started through all three.
    jobs = [
        await workers[i % 3].stub.StartTransfer(start_request("1.0", f"qa/app{i}", "1.0"))
        for i in range(n)
    ]
    # Watched on w0, wherever they run.
    streams = await asyncio.gather(*(watch_all(workers[0], t.id) for t in jobs))

    owners = dict(pg_rows(pg_url, "SELECT id, lease_owner FROM transfer.jobs"))
    for t, seen in zip(jobs, streams, strict=True):
        last = seen[-1]
        assert last.id == t.id and last.state == T.STATE_DONE and last.attempts == 1, last
        assert last.digest == img.digest
        assert T.STATE_RUNNING in {s.state for s in seen}
        assert last.blobs_total == len(img.blobs)
    assert Counter(owners.values()).keys() == {"w0", "w1", "w2"}  # all three ran some
    ran_elsewhere = [t for t in jobs if owners[t.id] != "w0"]
    assert ran_elsewhere  # so the watches above were served by a replica that did not run them
    # Done exactly once: one "done" line per job in all the logs, by its owner.
    for t in jobs:
        lines = {w.worker_id: len(re.findall(rf"transfer {t.id}: done", w.log_text()))
                 for w in workers}
        assert sum(lines.values()) == 1 and lines[owners[t.id]] == 1, (t.id, lines)
    # One manifest written per destination.
    for i in range(n):
        assert len(dst.requests("PUT", rf"^/v2/qa/app{i}/manifests/")) == 1
        assert digest_of(registry2, f"qa/app{i}", "1.0") == img.digest
    for w in workers:
        await w.stop()


async def test_a_killed_worker_s_job_is_finished_by_another_and_no_blob_is_uploaded_twice(
    start_workers: StartWorkers,
    pg_url: str,
    registry: RegistryProcess,
    registry2: RegistryProcess,
    images: ImageBuilder,
    fault_proxy: Callable[[str], FaultProxy],
) -> None:
    img = images.image("big", layers=[150_000] * 6)
    push(img, registry, "team/app")
    blobs = [b.digest for b in img.blobs]
    src = fault_proxy(registry.url)
    src.delay(r"/blobs/sha256:", 0.4, method="GET")  # one blob at a time, slowly
    dst = fault_proxy(registry2.url)
    workers = start_workers(2, "--max-blobs", "1")
    await add_endpoints(workers[0].stub, dev=src.url, qa=dst.url)
    t = await workers[1].stub.StartTransfer(start_request("big", "qa/app", "big"))
    owner_id = await until(lambda: owner_of(pg_url, t.id), 20, "a worker claims the job")
    owner = next(w for w in workers if w.worker_id == owner_id)
    survivor = next(w for w in workers if w is not owner)

    def landed() -> set[str]:
        return {d for d in blobs if registry2.blob_exists("qa/app", d)}

    await until(lambda: len(landed()) >= 2, 60, "two blobs at the destination")
    await owner.kill()
    killed_at = time.monotonic()
    # What the dead worker had sent is settled once nothing is in flight at the destination.
    await until(lambda: dst.in_flight == 0, 10, "the destination proxy is idle")
    before = landed()
    mark = len(dst.log)
    assert 0 < len(before) < len(blobs), f"the kill did not land mid-copy: {len(before)}"
    assert not registry2.blob_exists("qa/app", img.digest)

    done = (await watch_all(survivor, t.id, timeout=90))[-1]
    assert done.state == T.STATE_DONE, done.message
    assert done.attempts == 2
    # Taken over only once the lease had expired (the dead worker renewed it until the kill).
    taken = await until(
        lambda: re.search(rf"transfer {t.id}: attempt 2", survivor.log_text()), 5, "log"
    )
    assert taken and time.monotonic() - killed_at >= float(LEASE_SECONDS) - 1.5
    assert pg_rows(pg_url, "SELECT lease_owner FROM transfer.jobs WHERE id = %s", t.id) == [
        (survivor.worker_id,)
    ]
    assert done.digest == img.digest == digest_of(registry2, "qa/app", "big")
    assert inspect_raw(registry2, "qa/app", "big") == inspect_raw(registry, "team/app", "big")
    puts_after = puts_by_digest(dst.log[mark:])
    # Blobs that had reached the destination were not uploaded again...
    assert not set(puts_after) & before, puts_after
    # ... and each missing one was uploaded exactly once, by the survivor.
    assert puts_after == {d: 1 for d in blobs if d not in before}
    assert done.blobs_skipped == len(before)
    await survivor.stop()


async def test_cancel_and_watch_served_by_a_replica_that_does_not_run_the_job(
    start_workers: StartWorkers,
    pg_url: str,
    registry: RegistryProcess,
    registry2: RegistryProcess,
    images: ImageBuilder,
    fault_proxy: Callable[[str], FaultProxy],
) -> None:
    img = images.image("slow", layers=[100_000] * 4)
    push(img, registry, "team/app")
    src = fault_proxy(registry.url)
    src.delay(r"/blobs/sha256:", 2.0, method="GET")
    workers = start_workers(2, "--max-blobs", "1")
    await add_endpoints(workers[0].stub, dev=src.url, qa=registry2.url)
    t = await workers[0].stub.StartTransfer(start_request("slow", "qa/app", "slow"))
    owner_id = await until(lambda: owner_of(pg_url, t.id), 20, "a worker claims the job")
    owner = next(w for w in workers if w.worker_id == owner_id)
    other = next(w for w in workers if w is not owner)

    watch = asyncio.create_task(watch_all(other, t.id))
    # The row carries the owner's progress: the copy has planned its blobs.
    await until(
        lambda: pg_rows(pg_url, "SELECT blobs_total FROM transfer.jobs WHERE id = %s",
                        t.id)[0][0] > 0,
        30, "progress saved",
    )
    t0 = time.monotonic()
    canceled = await other.stub.CancelTransfer(transfer_pb2.CancelTransferRequest(id=t.id))
    took = time.monotonic() - t0
    assert canceled.state == T.STATE_CANCELED, canceled
    assert took < 5, took  # the owner saw cancel_requested at its next lease renewal
    seen = await asyncio.wait_for(watch, 30)
    assert seen[-1].state == T.STATE_CANCELED
    running = [s for s in seen if s.state == T.STATE_RUNNING]
    assert running and running[-1].blobs_total == len(img.blobs)
    # The owner stopped its copy and recorded the cancel; the other only asked.
    assert "cancel requested on another replica" in owner.log_text()
    assert f"transfer {t.id}: canceled" in owner.log_text()
    assert pg_rows(pg_url, "SELECT state, lease_owner, cancel_requested FROM transfer.jobs "
                   "WHERE id = %s", t.id) == [("canceled", owner.worker_id, 1)]
    assert not registry2.blob_exists("qa/app", img.digest)
    for w in workers:
        await w.stop()
