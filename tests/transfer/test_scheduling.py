"""Scheduling of transfer jobs (issue 10, findings 3 and 5): options.source_tag and one job at
a time per destination tag (the destination ends on the source's current digest), a
per-endpoint share of job slots, and rescheduling instead of giving up. Real registries; the
fault proxy (registry_testkit) for slowness, silence and Retry-After."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest
from mirror.v1 import common_pb2, transfer_pb2

from registry_testkit.faultproxy import FaultProxy
from registry_testkit.images import ImageBuilder, digest_of, push
from registry_testkit.ports import free_port
from registry_testkit.registry import RegistryProcess
from tests.transfer.transfer_support import Served, ServeFn, endpoint_msg, stop_served

pytestmark = pytest.mark.registry

T = transfer_pb2.Transfer
FINAL = (T.STATE_DONE, T.STATE_ERROR, T.STATE_CANCELED, T.STATE_SUPERSEDED)


async def _add(s: Served, name: str, url: str) -> None:
    await s.stub.CreateEndpoint(
        transfer_pb2.CreateEndpointRequest(endpoint=endpoint_msg(name, url))
    )


async def _start(
    s: Served, ref: str, src: str = "dev", dst: str = "qa", tag: str = "rel", source_tag: str = ""
) -> T:
    return await s.stub.StartTransfer(
        transfer_pb2.StartTransferRequest(
            source=common_pb2.ImageLocation(endpoint=src, repository="team/app", reference=ref),
            destination=transfer_pb2.TransferDestination(
                endpoint=dst, repository="qa/app", tag=tag
            ),
            options=transfer_pb2.TransferOptions(source_tag=source_tag),
        )
    )


async def _get(s: Served, job_id: str) -> T:
    return await s.stub.GetTransfer(transfer_pb2.GetTransferRequest(id=job_id))


async def _until(
    s: Served, job_id: str, ok: Callable[[T], bool], timeout: float, what: str
) -> T:
    """Poll GetTransfer until `ok` holds (deadline `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        t = await _get(s, job_id)
        if ok(t):
            return t
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s; last {t}")
        await asyncio.sleep(0.05)


def _final(t: T) -> bool:
    return t.state in FINAL


async def _wait_for(cond: Callable[[], bool | Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if isinstance(got, Awaitable):
            got = await got
        if got:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        await asyncio.sleep(0.05)


async def test_slow_older_transfer_is_superseded_and_destination_ends_on_newer(
    serve: ServeFn,
    registry: RegistryProcess,
    registry2: RegistryProcess,
    images: ImageBuilder,
    fault_proxy: Callable[[str], FaultProxy],
) -> None:
    """Push `rel` as A, then as B; A's transfer is slow. A must not write `rel` after B."""
    a = images.image("rel", layers=[300_000])
    b = images.image("rel", layers=[200_000, 1000])
    push(a, registry, "team/app")
    proxy = fault_proxy(registry.url)
    layer_a = max(a.blobs, key=lambda d: d.size).digest
    proxy.delay(rf"/blobs/{layer_a}$", 6.0, method="GET")
    s = await serve()
    await _add(s, "dev", proxy.url)
    await _add(s, "qa", registry2.url)

    ta = await _start(s, a.digest, source_tag="rel")
    await _wait_for(lambda: bool(proxy.requests("GET", rf"/blobs/{layer_a}$")), 30, "A slow")
    push(b, registry, "team/app")  # the newer push of the tag
    tb = await _start(s, b.digest, source_tag="rel")
    assert (await _get(s, ta.id)).state == T.STATE_RUNNING  # B really came while A ran
    parked = await _until(s, tb.id, lambda x: ta.id in x.message, 30, "B says why it waits")
    assert parked.state == T.STATE_WAITING and "one at a time" in parked.message

    fa = await _until(s, ta.id, _final, 60, "A ends")
    fb = await _until(s, tb.id, _final, 60, "B ends")
    assert fa.state == T.STATE_SUPERSEDED, fa.message
    assert b.digest in fa.message and "rel" in fa.message
    assert fb.state == T.STATE_DONE, fb.message
    assert digest_of(registry2, "qa/app", "rel") == b.digest
    assert digest_of(registry, "team/app", "rel") == b.digest
    # One at a time per destination tag, in creation order.
    assert fb.start_time.ToNanoseconds() >= fa.end_time.ToNanoseconds()


async def test_late_older_transfer_changes_nothing(
    serve: ServeFn, registry: RegistryProcess, registry2: RegistryProcess, images: ImageBuilder
) -> None:
    """A's event retried after 503s reaches the service after B's: B is mirrored, A is not."""
    a = images.image("rel", layers=[30_000])
    b = images.image("rel", layers=[20_000, 1000])
    push(a, registry, "team/app")
    push(b, registry, "team/app")
    s = await serve()
    await _add(s, "dev", registry.url)
    await _add(s, "qa", registry2.url)
    fb = await _until(s, (await _start(s, b.digest, source_tag="rel")).id, _final, 60, "B")
    assert fb.state == T.STATE_DONE, fb.message
    fa = await _until(s, (await _start(s, a.digest, source_tag="rel")).id, _final, 60, "A")
    assert fa.state == T.STATE_SUPERSEDED and b.digest in fa.message
    assert fa.digest == a.digest
    assert digest_of(registry2, "qa/app", "rel") == b.digest
    # Without source_tag the job copies what it was asked to (the caller's decision).
    plain = await _until(s, (await _start(s, a.digest)).id, _final, 60, "plain")
    assert plain.state == T.STATE_DONE and digest_of(registry2, "qa/app", "rel") == a.digest


async def test_silent_source_does_not_delay_a_healthy_transfer(
    serve: ServeFn,
    registry: RegistryProcess,
    registry2: RegistryProcess,
    registry_factory: Callable[..., RegistryProcess],
    images: ImageBuilder,
    fault_proxy: Callable[[str], FaultProxy],
) -> None:
    img = images.image("1.0", layers=[50_000])
    other = images.image("1.0", layers=[60_000])  # other blobs: no copy of them is in flight
    slow_reg = registry_factory()
    push(other, slow_reg, "team/app")
    push(img, registry, "team/app")
    silent = fault_proxy(slow_reg.url)
    silent.delay(r"/blobs/", 120.0, method="GET")  # the source stops answering blob reads
    s = await serve(max_jobs=2)  # default share per source endpoint: 1 slot
    await _add(s, "slow", silent.url)
    await _add(s, "dev", registry.url)
    await _add(s, "qa", registry2.url)
    stuck = [await _start(s, "1.0", src="slow", tag=f"s{i}") for i in range(3)]
    await _wait_for(lambda: bool(silent.requests("GET", r"/blobs/")), 30, "slow source reached")
    t0 = time.monotonic()
    healthy = await _until(s, (await _start(s, "1.0", tag="ok")).id, _final, 30, "healthy")
    took = time.monotonic() - t0
    assert healthy.state == T.STATE_DONE, healthy.message
    assert digest_of(registry2, "qa/app", "ok") == img.digest
    states = [(await _get(s, t.id)).state for t in stuck]
    assert all(st in (T.STATE_RUNNING, T.STATE_WAITING) for st in states), states
    assert sum(st == T.STATE_RUNNING for st in states) == 1  # its share, no more
    assert took < 20, took

    async def said() -> bool:
        # Why jobs wait is written at most once a second (transfer_service/worker.py).
        messages = [(await _get(s, t.id)).message for t in stuck]
        return sum("waiting for a job slot of source endpoint slow" in m for m in messages) == 2

    await _wait_for(said, 5, "the two waiting jobs say why they wait")
    for t in stuck:
        await s.stub.CancelTransfer(transfer_pb2.CancelTransferRequest(id=t.id))


async def test_destination_down_longer_than_quick_retries_is_rescheduled_and_finishes(
    serve: ServeFn, registry: RegistryProcess, registry2: RegistryProcess, images: ImageBuilder
) -> None:
    img = images.image("1.0", layers=[40_000])
    push(img, registry, "team/app")
    port = free_port()  # the destination's address; nothing listens there yet (down)
    kw = {"max_attempts": 2, "reschedule_base": 1.0, "reschedule_max": 2.0}
    s = await serve(**kw)
    await _add(s, "dev", registry.url)
    await _add(s, "qa", f"http://127.0.0.1:{port}")
    t = await _start(s, "1.0")
    first = await _until(
        s, t.id, lambda x: x.HasField("next_attempt_time"), 120, "rescheduled"
    )
    assert first.state == T.STATE_WAITING and first.attempts == 2
    assert "next attempt at" in first.message and "qa" in first.message
    assert first.next_attempt_time.ToSeconds() >= first.create_time.ToSeconds()
    # The reschedule timer fires in-process: another round of quick attempts, rescheduled again.
    again = await _until(s, t.id, lambda x: x.attempts >= 4 and x.HasField("next_attempt_time"),
                         120, "second round")
    assert again.state == T.STATE_WAITING
    # The retry time is stored with the job: it survives a restart.
    await stop_served(s)
    proxy = FaultProxy(upstream=registry2.url, port=port).start()  # the destination is back
    try:
        s2 = await serve(s.data, **kw)
        resumed = await _get(s2, t.id)
        assert resumed.state in (T.STATE_WAITING, T.STATE_RUNNING, T.STATE_DONE)
        done = await _until(s2, t.id, _final, 120, "finished after the outage")
        assert done.state == T.STATE_DONE, done.message
        assert not done.HasField("next_attempt_time")
        assert digest_of(registry2, "qa/app", "rel") == img.digest
    finally:
        proxy.stop()


async def test_retry_after_beyond_the_cap_reschedules_with_a_message(
    serve: ServeFn,
    registry: RegistryProcess,
    registry2: RegistryProcess,
    images: ImageBuilder,
    fault_proxy: Callable[[str], FaultProxy],
) -> None:
    img = images.image("1.0", layers=[40_000])
    push(img, registry, "team/app")
    dst = fault_proxy(registry2.url)
    # The copy's first request to the destination: the POST that opens an upload session.
    dst.status(r"/blobs/uploads/", 503, times=1, retry_after="86400", method="POST")
    s = await serve(reschedule_base=1.0, reschedule_max=3.0)
    await _add(s, "dev", registry.url)
    await _add(s, "qa", dst.url)
    t = await _start(s, "1.0")
    waiting = await _until(s, t.id, lambda x: x.HasField("next_attempt_time"), 60, "rescheduled")
    assert waiting.state == T.STATE_WAITING
    assert "86400" in waiting.message and "next attempt at" in waiting.message
    wait = waiting.next_attempt_time.ToNanoseconds() / 1e9 - time.time()
    assert wait <= 3.5  # capped by reschedule_max, not a day
    done = await _until(s, t.id, _final, 60, "done after the wait")
    assert done.state == T.STATE_DONE, done.message


async def test_digest_mismatch_after_retries_fails_and_is_not_rescheduled(
    serve: ServeFn,
    registry: RegistryProcess,
    registry2: RegistryProcess,
    images: ImageBuilder,
    fault_proxy: Callable[[str], FaultProxy],
) -> None:
    img = images.image("1.0", layers=[40_000])
    push(img, registry, "team/app")
    src = fault_proxy(registry.url)
    layer = max(img.blobs, key=lambda d: d.size).digest
    src.corrupt_blob(layer, times=None)  # every read of it is corrupted
    s = await serve(max_attempts=2, reschedule_base=1.0, reschedule_max=2.0)
    await _add(s, "dev", src.url)
    await _add(s, "qa", registry2.url)
    done = await _until(s, (await _start(s, "1.0")).id, _final, 120, "fails")
    assert done.state == T.STATE_ERROR and done.attempts == 2, done
    assert "gave up after 2 attempts" in done.message
    assert not done.HasField("next_attempt_time")
