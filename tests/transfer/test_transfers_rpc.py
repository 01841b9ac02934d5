"""Transfers over gRPC end to end: real registries, real skopeo, real copy engine."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import grpc
import pytest
from grpc import aio
from mirror.v1 import common_pb2, transfer_pb2

from registry_testkit.faultproxy import FaultProxy
from registry_testkit.images import ImageBuilder, digest_of, inspect_raw, push
from registry_testkit.registry import RegistryProcess
from servicekit import metrics
from tests.transfer.transfer_support import Served, ServeFn, endpoint_msg, rpc_details, stop_served

pytestmark = pytest.mark.registry

T = transfer_pb2.Transfer


async def add_endpoint(s: Served, name: str, url: str, **kw: object) -> None:
    await s.stub.CreateEndpoint(
        transfer_pb2.CreateEndpointRequest(endpoint=endpoint_msg(name, url, **kw))
    )


def start_req(
    src_repo: str = "team/app",
    ref: str = "1.0",
    dst_repo: str = "qa/app",
    tag: str = "",
    src: str = "dev",
    dst: str = "qa",
    key: str = "",
    platforms: tuple[str, ...] = (),
    fail_if_tag_exists: bool = False,
) -> transfer_pb2.StartTransferRequest:
    return transfer_pb2.StartTransferRequest(
        source=common_pb2.ImageLocation(endpoint=src, repository=src_repo, reference=ref),
        destination=transfer_pb2.TransferDestination(endpoint=dst, repository=dst_repo, tag=tag),
        options=transfer_pb2.TransferOptions(
            platforms=list(platforms), fail_if_tag_exists=fail_if_tag_exists
        ),
        idempotency_key=key,
    )


def _sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


async def watch_all(
    s: Served, job_id: str, timeout: float = 60, final_only: bool = False
) -> list[transfer_pb2.Transfer]:
    out: list[transfer_pb2.Transfer] = []
    req = transfer_pb2.WatchTransferRequest(id=job_id, final_only=final_only)

    async def go() -> None:
        async for t in s.stub.WatchTransfer(req):
            out.append(t)

    await asyncio.wait_for(go(), timeout)
    return out


async def test_single_manifest_end_to_end_with_watch(
    serve: ServeFn, registry: RegistryProcess, registry2: RegistryProcess, images: ImageBuilder
) -> None:
    img = images.image("1.0", layers=[300_000, 200_000])
    push(img, registry, "team/app")
    done_before = _sample("mirror_transfers_total", state="done")
    bytes_before = _sample("mirror_bytes_copied_total")
    s = await serve()
    await add_endpoint(s, "dev", registry.url)
    await add_endpoint(s, "qa", registry2.url)

    t = await s.stub.StartTransfer(start_req(tag="copied"))
    assert t.id and t.state in (T.STATE_WAITING, T.STATE_RUNNING)
    snaps = await watch_all(s, t.id)
    assert snaps[-1].state == T.STATE_DONE, snaps[-1]
    assert all(x.state != T.STATE_DONE for x in snaps[:-1])  # the stream ends at the final state
    final = snaps[-1]
    assert final.digest == img.digest == digest_of(registry2, "qa/app", "copied")
    assert inspect_raw(registry2, "qa/app", "copied") == inspect_raw(registry, "team/app", "1.0")
    assert final.blobs_total == 3 and final.blobs_done == 3 and final.manifests_done == 1
    assert final.bytes_done == final.bytes_total == img.total_blob_bytes
    assert final.attempts == 1 and final.end_time.seconds >= final.start_time.seconds > 0
    got = await s.stub.GetTransfer(transfer_pb2.GetTransferRequest(id=t.id))
    assert got.state == T.STATE_DONE and got.digest == final.digest
    assert _sample("mirror_transfers_total", state="done") == done_before + 1
    assert _sample("mirror_bytes_copied_total") == bytes_before + img.total_blob_bytes
    # Watching a final job sends it once and ends.
    again = await watch_all(s, t.id)
    assert [x.state for x in again] == [T.STATE_DONE]


async def test_a_final_only_watch_gets_the_start_and_the_end_and_no_progress(
    serve: ServeFn,
    registry: RegistryProcess,
    registry2: RegistryProcess,
    images: ImageBuilder,
    fault_proxy,
) -> None:
    img = images.image("1.0", layers=[300_000, 200_000, 100_000])
    push(img, registry, "team/app")
    slow: FaultProxy = fault_proxy(registry2.url)
    slow.delay(r"/blobs/uploads/", 0.3, method="PUT")  # progress to report between blobs
    s = await serve()
    await add_endpoint(s, "dev", registry.url)
    await add_endpoint(s, "qa", slow.url)
    t = await s.stub.StartTransfer(start_req(tag="watched"))
    everything, ends = await asyncio.gather(
        watch_all(s, t.id), watch_all(s, t.id, final_only=True)
    )
    assert everything[-1].state == ends[-1].state == T.STATE_DONE
    assert len(everything) > 2  # progress snapshots came in between
    assert len(ends) == 2 and ends[0].state != T.STATE_DONE
    assert ends[-1] == everything[-1]


async def test_multi_platform_index_and_source_tag_kept(
    serve: ServeFn, registry: RegistryProcess, registry2: RegistryProcess, images: ImageBuilder
) -> None:
    idx = images.index("2.0", platforms=("linux/amd64", "linux/arm64/v8"), layers=[100_000])
    push(idx, registry, "team/app")
    s = await serve()
    await add_endpoint(s, "dev", registry.url)
    await add_endpoint(s, "qa", registry2.url)
    # No destination tag: the source tag is kept.
    t = await s.stub.StartTransfer(start_req(ref="2.0"))
    final = (await watch_all(s, t.id))[-1]
    assert final.state == T.STATE_DONE, final.message
    assert final.digest == idx.digest == digest_of(registry2, "qa/app", "2.0")
    assert final.manifests_total == 3 and final.manifests_done == 3
    for child in idx.children:
        assert digest_of(registry2, "qa/app", child.digest) == child.digest


async def test_idempotency_key_concurrent_and_across_restart(
    serve: ServeFn, registry: RegistryProcess, registry2: RegistryProcess, images: ImageBuilder
) -> None:
    push(images.image("1.0"), registry, "team/app")
    s = await serve()
    await add_endpoint(s, "dev", registry.url)
    await add_endpoint(s, "qa", registry2.url)
    results = await asyncio.gather(
        *[s.stub.StartTransfer(start_req(key="ci-build-42")) for _ in range(8)]
    )
    assert len({r.id for r in results}) == 1
    job_id = results[0].id
    await watch_all(s, job_id)
    await stop_served(s)

    s2 = await serve(s.data)
    again = await s2.stub.StartTransfer(start_req(key="ci-build-42"))
    assert again.id == job_id and again.state == T.STATE_DONE
    listed = await s2.stub.ListTransfers(transfer_pb2.ListTransfersRequest())
    assert [x.id for x in listed.transfers] == [job_id]
    # Same key, other parameters: refused.
    with pytest.raises(aio.AioRpcError) as info:
        await s2.stub.StartTransfer(start_req(key="ci-build-42", tag="other"))
    code, fields, _ = rpc_details(info.value)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and fields[0][0] == "idempotency_key"


async def test_list_transfers_filters_and_paging(
    serve: ServeFn, registry: RegistryProcess, registry2: RegistryProcess, images: ImageBuilder
) -> None:
    push(images.image("1.0"), registry, "team/app")
    s = await serve()
    await add_endpoint(s, "dev", registry.url)
    await add_endpoint(s, "qa", registry2.url)
    ids = []
    for i in range(4):
        t = await s.stub.StartTransfer(start_req(dst_repo=f"qa/app{i % 2}", tag=f"t{i}"))
        ids.append(t.id)
    # Promotion inside the source registry: destination endpoint "dev".
    promo = await s.stub.StartTransfer(start_req(dst="dev", dst_repo="team/app", tag="promoted"))
    for i in [*ids, promo.id]:
        assert (await watch_all(s, i))[-1].state == T.STATE_DONE
    missing = await s.stub.StartTransfer(start_req(ref="no-such-tag", tag="x"))
    assert (await watch_all(s, missing.id))[-1].state == T.STATE_ERROR

    async def all_pages(req: transfer_pb2.ListTransfersRequest) -> tuple[list[str], int]:
        got, pages = [], 0
        while True:
            resp = await s.stub.ListTransfers(req)
            got += [x.id for x in resp.transfers]
            pages += 1
            if not resp.next_page_token:
                return got, pages
            req.page_token = resp.next_page_token

    everything, pages = await all_pages(transfer_pb2.ListTransfersRequest(page_size=2))
    assert everything == [missing.id, promo.id, *reversed(ids)] and pages == 3
    qa, _ = await all_pages(transfer_pb2.ListTransfersRequest(destination_endpoint="qa"))
    assert qa == [missing.id, *reversed(ids)]
    app1, _ = await all_pages(transfer_pb2.ListTransfersRequest(repository="qa/app1"))
    assert app1 == [ids[3], ids[1]]
    errors, _ = await all_pages(transfer_pb2.ListTransfersRequest(states=[T.STATE_ERROR]))
    assert errors == [missing.id]
    # A page token only continues the listing it came from.
    first = await s.stub.ListTransfers(transfer_pb2.ListTransfersRequest(page_size=1))
    with pytest.raises(aio.AioRpcError) as info:
        await s.stub.ListTransfers(
            transfer_pb2.ListTransfersRequest(
                page_size=1, page_token=first.next_page_token, destination_endpoint="qa"
            )
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_permanent_error_fails_at_once_retryable_error_is_retried(
    serve: ServeFn,
    registry: RegistryProcess,
    registry2: RegistryProcess,
    images: ImageBuilder,
    fault_proxy: object,
) -> None:
    push(images.image("1.0"), registry, "team/app")
    proxy: FaultProxy = fault_proxy(registry.url)  # type: ignore[operator]
    s = await serve()
    await add_endpoint(s, "dev", proxy.url)
    await add_endpoint(s, "qa", registry2.url)
    # 404 on the source manifest: ERROR after one attempt, with the registry's reason.
    gone = await s.stub.StartTransfer(start_req(ref="nope"))
    final = (await watch_all(s, gone.id))[-1]
    assert final.state == T.STATE_ERROR and final.attempts == 1
    assert "MANIFEST_UNKNOWN" in final.message or "not found" in final.message.lower()
    # More 503s than the registry client retries on its own: the job itself retries.
    proxy.status(r"/v2/team/app/manifests/1\.0$", status=503, times=6)
    t = await s.stub.StartTransfer(start_req())
    snaps = await watch_all(s, t.id)
    assert snaps[-1].state == T.STATE_DONE and snaps[-1].attempts == 2, snaps[-1]
    assert any(x.state == T.STATE_WAITING and "retrying" in x.message for x in snaps)


async def test_start_transfer_validation(
    serve: ServeFn, registry: RegistryProcess
) -> None:
    s = await serve()
    await add_endpoint(s, "dev", registry.url)
    with pytest.raises(aio.AioRpcError) as info:
        await s.stub.StartTransfer(
            start_req(src_repo="Team/App", ref="bad tag!", dst_repo="", tag="-x",
                      platforms=("linux",))
        )
    code, fields, _ = rpc_details(info.value)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert {f for f, _ in fields} == {
        "source.repository", "source.reference", "destination.repository", "destination.tag",
        "options.platforms[0]",
    }
    with pytest.raises(aio.AioRpcError) as info:
        await s.stub.StartTransfer(start_req(dst="nowhere"))
    code, _, pre = rpc_details(info.value)
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert [v.subject for v in pre] == ["endpoints/nowhere"]
    listed = await s.stub.ListTransfers(transfer_pb2.ListTransfersRequest())
    assert list(listed.transfers) == []  # nothing journaled for refused requests
    with pytest.raises(aio.AioRpcError) as info:
        await s.stub.GetTransfer(transfer_pb2.GetTransferRequest(id="nope"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(aio.AioRpcError) as info:
        async for _ in s.stub.WatchTransfer(transfer_pb2.WatchTransferRequest(id="nope")):
            pass
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_cancel_running_large_copy(
    serve: ServeFn,
    registry: RegistryProcess,
    registry2: RegistryProcess,
    images: ImageBuilder,
    fault_proxy: object,
    tmp_path: Path,
) -> None:
    push(images.image("big", layers=[12 << 20]), registry, "team/app")
    proxy: FaultProxy = fault_proxy(registry2.url)  # type: ignore[operator]
    # Uploads to the destination hang: the copy stays running until it is cancelled.
    proxy.delay(r"/blobs/uploads/", 6, method="PUT")
    proxy.delay(r"/blobs/uploads/", 6, method="PATCH")
    spool = tmp_path / "spool"
    s = await serve(spool_dir=spool, spool_threshold=1 << 20)
    await add_endpoint(s, "dev", registry.url)
    await add_endpoint(s, "qa", proxy.url)
    t = await s.stub.StartTransfer(start_req(ref="big"))
    deadline = time.monotonic() + 30
    while not proxy.requests("PUT", "/blobs/uploads/") + proxy.requests("PATCH", "/blobs/uploads/"):
        assert time.monotonic() < deadline, "the upload never started"
        await asyncio.sleep(0.05)
    running = await s.stub.GetTransfer(transfer_pb2.GetTransferRequest(id=t.id))
    assert running.state == T.STATE_RUNNING
    # The 12 MiB blob is over the spool threshold: it sits on disk while it uploads.
    assert [p for p in spool.rglob("*") if p.is_file()], "nothing was spooled"
    # The spool usage gauge follows the spool while the job runs.
    deadline = time.monotonic() + 5
    while _sample("mirror_spool_bytes") <= 0:
        assert time.monotonic() < deadline, "spool usage never reported"
        await asyncio.sleep(0.05)
    # Progress reaches the journal periodically while the job runs (not only at the end).
    deadline = time.monotonic() + 5
    while s.servicer.journal.get(t.id).progress.bytes_total == 0:
        assert time.monotonic() < deadline, "running progress never persisted"
        await asyncio.sleep(0.05)
    assert s.servicer.journal.get(t.id).progress.blobs_total == 2
    # An endpoint in use by a running transfer cannot be deleted.
    with pytest.raises(aio.AioRpcError) as info:
        await s.stub.DeleteEndpoint(transfer_pb2.DeleteEndpointRequest(name="qa"))
    code, _, pre = rpc_details(info.value)
    assert code == grpc.StatusCode.FAILED_PRECONDITION and pre[0].subject == f"transfers/{t.id}"
    watcher = asyncio.create_task(watch_all(s, t.id))
    started = time.monotonic()
    canceled = await s.stub.CancelTransfer(transfer_pb2.CancelTransferRequest(id=t.id))
    took = time.monotonic() - started
    assert canceled.state == T.STATE_CANCELED and took < 5, (canceled, took)
    assert (await watcher)[-1].state == T.STATE_CANCELED
    assert [p for p in spool.rglob("*") if p.is_file()] == []
    assert _sample("mirror_spool_bytes") == 0
    # Cancelling again returns the final job unchanged.
    again = await s.stub.CancelTransfer(transfer_pb2.CancelTransferRequest(id=t.id))
    assert again.state == T.STATE_CANCELED and again.end_time == canceled.end_time
    # The worker is free for the next job (the cancelled one does not hold a slot).
    proxy.clear()
    nxt = await s.stub.StartTransfer(start_req(ref="big", tag="after-cancel"))
    assert (await watch_all(s, nxt.id, timeout=120))[-1].state == T.STATE_DONE


async def test_stale_spool_files_removed_on_start(serve: ServeFn, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / "0123456789abcdef-0123456789ab.blob").write_bytes(b"left by a killed process")
    (spool / "keep.txt").write_text("not ours")
    await serve(spool_dir=spool)
    assert sorted(p.name for p in spool.iterdir()) == ["keep.txt"]


async def test_max_jobs_bounds_running_transfers(
    serve: ServeFn,
    registry: RegistryProcess,
    registry2: RegistryProcess,
    images: ImageBuilder,
    fault_proxy: object,
) -> None:
    push(images.image("1.0"), registry, "team/app")
    proxy: FaultProxy = fault_proxy(registry2.url)  # type: ignore[operator]
    proxy.delay(r"/blobs/uploads/", 0.5, method="PATCH")
    s = await serve(max_jobs=1)
    await add_endpoint(s, "dev", registry.url)
    await add_endpoint(s, "qa", proxy.url)
    a = await s.stub.StartTransfer(start_req(dst_repo="qa/a"))
    b = await s.stub.StartTransfer(start_req(dst_repo="qa/b"))
    seen_b_waiting_while_a_runs = False
    gauges: set[tuple[float, float]] = set()

    async def sample_gauges() -> None:
        # Every turn of the event loop the worker shares: no state it holds is missed.
        while True:
            gauges.add((_sample("mirror_transfers_active", state="waiting"),
                        _sample("mirror_transfers_active", state="running")))
            await asyncio.sleep(0)

    sampler = asyncio.create_task(sample_gauges())
    while True:
        ga = await s.stub.GetTransfer(transfer_pb2.GetTransferRequest(id=a.id))
        gb = await s.stub.GetTransfer(transfer_pb2.GetTransferRequest(id=b.id))
        # (ga may be stale by the time gb is read: "both running" here would prove nothing;
        # the times below and the running gauge check that bound.)
        if ga.state == T.STATE_RUNNING and gb.state == T.STATE_WAITING:
            seen_b_waiting_while_a_runs = True
        if gb.state == T.STATE_DONE:
            break
        await asyncio.sleep(0.02)
    sampler.cancel()
    assert seen_b_waiting_while_a_runs
    assert (1, 1) in gauges  # queue depth gauges: one waiting while one runs
    assert all(running <= 1 for _, running in gauges)  # max_jobs=1
    ga = await s.stub.GetTransfer(transfer_pb2.GetTransferRequest(id=a.id))
    assert ga.state == T.STATE_DONE
    assert ga.end_time.ToNanoseconds() <= gb.start_time.ToNanoseconds()  # b started after a
    assert _sample("mirror_transfers_active", state="waiting") == 0
    assert _sample("mirror_transfers_active", state="running") == 0


async def test_fail_if_tag_exists_refuses_another_digest_and_keeps_the_tag(
    serve: ServeFn, registry: RegistryProcess, registry2: RegistryProcess, images: ImageBuilder
) -> None:
    first, second = images.image("1.0"), images.image("2.0")
    push(first, registry, "team/app")
    push(second, registry, "team/app")
    s = await serve()
    await add_endpoint(s, "dev", registry.url)
    await add_endpoint(s, "qa", registry2.url)
    done = await s.stub.StartTransfer(start_req(ref="1.0", tag="prod"))
    assert (await watch_all(s, done.id))[-1].state == T.STATE_DONE
    # Another digest onto the taken tag: a permanent error, nothing overwritten.
    refused = await s.stub.StartTransfer(
        start_req(ref="2.0", tag="prod", fail_if_tag_exists=True)
    )
    final = (await watch_all(s, refused.id))[-1]
    assert final.state == T.STATE_ERROR and final.attempts == 1, final
    assert "qa/app:prod exists" in final.message
    assert digest_of(registry2, "qa/app", "prod") == first.digest
    # The same digest is no conflict; without the option the tag is overwritten.
    same = await s.stub.StartTransfer(start_req(ref="1.0", tag="prod", fail_if_tag_exists=True))
    assert (await watch_all(s, same.id))[-1].state == T.STATE_DONE
    moved = await s.stub.StartTransfer(start_req(ref="2.0", tag="prod"))
    assert (await watch_all(s, moved.id))[-1].state == T.STATE_DONE
    assert digest_of(registry2, "qa/app", "prod") == second.digest


async def test_job_log_lines_carry_the_job_id_and_registry_errors_are_counted(
    serve: ServeFn, registry: RegistryProcess, registry2: RegistryProcess,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from servicekit.logs import _ContextFilter

    s = await serve()
    await add_endpoint(s, "dev", registry.url)
    await add_endpoint(s, "qa", registry2.url)
    before = _sample("mirror_registry_errors_total", registry="dev", code="MANIFEST_UNKNOWN")
    caplog.handler.addFilter(_ContextFilter())
    with caplog.at_level(logging.INFO, logger="transfer_service"):
        gone = await s.stub.StartTransfer(start_req(ref="no-such-tag"))
        final = (await watch_all(s, gone.id))[-1]
    assert final.state == T.STATE_ERROR
    job_lines = [r for r in caplog.records if r.name.startswith("transfer_service.worker")]
    assert len(job_lines) >= 2, [r.getMessage() for r in job_lines]  # the attempt, the error
    assert {getattr(r, "ctx", None) for r in job_lines} == {gone.id}
    after = _sample("mirror_registry_errors_total", registry="dev", code="MANIFEST_UNKNOWN")
    assert after == before + 1
