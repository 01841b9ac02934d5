"""The spool quota: reservations over the limit wait for space instead of filling the disk."""

from __future__ import annotations

import asyncio

from transfer_service.engine.spool import SpoolQuota


async def test_reservation_over_the_quota_waits_until_space_is_freed() -> None:
    quota = SpoolQuota(100)
    first_release = asyncio.Event()
    order: list[str] = []

    async def hold(name: str, n: int, release: asyncio.Event | None = None) -> None:
        async with quota.reserve(n):
            order.append(f"{name} in ({quota.used})")
            if release is not None:
                await release.wait()
        order.append(f"{name} out")

    a = asyncio.create_task(hold("a", 70, first_release))
    await asyncio.sleep(0.01)
    b = asyncio.create_task(hold("b", 50))  # 70 + 50 > 100: must wait for a
    await asyncio.sleep(0.05)
    assert order == ["a in (70)"] and quota.used == 70
    first_release.set()
    await asyncio.gather(a, b)
    assert order == ["a in (70)", "a out", "b in (50)", "b out"]
    assert quota.used == 0 and quota.peak == 70


async def test_blob_larger_than_the_quota_runs_alone() -> None:
    quota = SpoolQuota(100)
    inside = asyncio.Event()
    release = asyncio.Event()

    async def big() -> None:
        async with quota.reserve(250):
            inside.set()
            await release.wait()

    task = asyncio.create_task(big())
    await asyncio.wait_for(inside.wait(), 1)  # never waits forever on an empty spool
    small_in = asyncio.Event()

    async def small() -> None:
        async with quota.reserve(10):
            small_in.set()

    waiting = asyncio.create_task(small())
    await asyncio.sleep(0.05)
    assert not small_in.is_set() and quota.used == 250  # nothing runs beside it
    release.set()
    await asyncio.gather(task, waiting)
    assert small_in.is_set() and quota.used == 0 and quota.peak == 250
