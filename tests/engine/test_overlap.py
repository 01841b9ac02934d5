"""Spooled blobs: the upload follows the spool file while the download is still writing it.

The source is throttled (or paused) by a streaming proxy so that the download takes long enough
to observe the overlap; a second streaming proxy in front of the destination records when
upload bytes arrive, and can cut an upload mid-body.
"""

from __future__ import annotations

import asyncio

import pytest

from registry_client import RegistryClient, errors
from registry_testkit.images import ImageRef
from registry_testkit.registry import RegistryProcess
from tests.engine.pacing_proxy import Exchange, PacingProxy
from tests.support.images import ImageBuilder, inspect_raw, push
from transfer_service.engine import CopyEngine, CopyRequest

pytestmark = pytest.mark.registry

MiB = 1 << 20


def _request(src: RegistryClient, dst: RegistryClient, repo: str) -> CopyRequest:
    return CopyRequest(src=src, src_repo=repo, src_ref="v1", dst=dst, dst_repo=repo, dst_tag="v1")


def _commits(dst: PacingProxy, digest: str) -> list[Exchange]:
    """Finishing PUTs (`?digest=`) of this blob seen at the destination."""
    quoted = digest.replace(":", "%3A")
    puts = dst.find("PUT", r"/blobs/uploads/")
    return [e for e in puts if digest in e.query or quoted in e.query]


def _layer_gets(src: PacingProxy, digest: str) -> list[Exchange]:
    return src.find("GET", rf"/blobs/{digest}$")


async def _seed_config(rc: RegistryClient, repo: str, img: ImageRef) -> None:
    """Put the image's config at the destination first, so every PATCH seen is the layer's."""
    config = img.blobs[0]
    data = (img.layout / "blobs" / "sha256" / config.digest.partition(":")[2]).read_bytes()
    await rc.upload_blob(repo, config.digest, data)


async def test_upload_starts_before_the_download_ends_and_commits_after(
    registry: RegistryProcess,
    registry2: RegistryProcess,
    images: ImageBuilder,
    engine: CopyEngine,
    clients,
    pacing_proxy,
) -> None:
    img = images.image("v1", layers=[6 * MiB])
    push(img, registry, "o/app")
    await _seed_config(clients(registry2), "o/app", img)
    layer = img.blobs[1]
    src, dst = pacing_proxy(registry.url), pacing_proxy(registry2.url)
    src.throttle(rf"/blobs/{layer.digest}$", 6 * MiB)  # about one second
    r = await engine.copy(_request(clients(src.url), clients(dst.url), "o/app"))
    assert r.digest == img.digest
    assert inspect_raw(registry2, "o/app", "v1") == img.manifest
    (get,) = _layer_gets(src, layer.digest)
    assert get.last_response_byte is not None
    download_end = get.last_response_byte
    patches = [e for e in dst.find("PATCH", r"/o/app/blobs/uploads/") if e.request_bytes]
    first_bytes = min(e.first_request_byte for e in patches if e.first_request_byte)
    # Upload bytes reached the destination while most of the download was still to come...
    assert first_bytes < download_end - 0.3, (first_bytes, download_end)
    assert sum(e.request_bytes for e in patches) == layer.size
    # ...but the blob was committed only after the last byte was in (and verified).
    (commit,) = _commits(dst, layer.digest)
    assert commit.start > download_end
    assert list(engine.spool_dir.iterdir()) == []


async def test_corrupted_byte_in_overlapped_upload_is_never_committed(
    registry: RegistryProcess,
    registry2: RegistryProcess,
    images: ImageBuilder,
    engine: CopyEngine,
    clients,
    fault_proxy,
    pacing_proxy,
) -> None:
    size = 4 * MiB
    img = images.image("v1", layers=[size])
    push(img, registry, "o/bad")
    await _seed_config(clients(registry2), "o/bad", img)
    layer = img.blobs[1]
    corrupter = fault_proxy(registry.url)
    corrupter.corrupt_blob(layer.digest, times=None, offset=size - 1000)  # near the very end
    src, dst = pacing_proxy(corrupter.url), pacing_proxy(registry2.url)
    src.throttle(rf"/blobs/{layer.digest}$", 8 * MiB)
    with pytest.raises(errors.DigestMismatch):
        await engine.copy(_request(clients(src.url), clients(dst.url), "o/bad"))
    gets = _layer_gets(src, layer.digest)
    assert len(gets) == engine.mover.attempts  # each attempt downloaded again, each corrupted
    patches = [e for e in dst.find("PATCH", r"/o/bad/blobs/uploads/") if e.first_request_byte]
    # The uploads really ran alongside the downloads (the first one before its GET ended)...
    assert patches and patches[0].first_request_byte < gets[0].last_response_byte - 0.1
    # ...yet no upload of the bad blob was ever committed: each was cancelled instead.
    assert _commits(dst, layer.digest) == []
    assert len(dst.find("DELETE", r"/o/bad/blobs/uploads/")) == engine.mover.attempts
    assert not registry2.blob_data_exists(layer.digest)
    assert not registry2.blob_exists("o/bad", layer.digest)
    assert list(engine.spool_dir.iterdir()) == []
    assert engine.quota.used == 0


async def test_upload_broken_mid_overlap_resumes_from_the_partial_spool(
    registry: RegistryProcess,
    registry2: RegistryProcess,
    images: ImageBuilder,
    engine: CopyEngine,
    clients,
    pacing_proxy,
) -> None:
    img = images.image("v1", layers=[6 * MiB])
    push(img, registry, "o/retry")
    await _seed_config(clients(registry2), "o/retry", img)
    layer = img.blobs[1]
    src, dst = pacing_proxy(registry.url), pacing_proxy(registry2.url)
    src.throttle(rf"/blobs/{layer.digest}$", 6 * MiB)
    dst.cut_request(r"/o/retry/blobs/uploads/", after_bytes=1 * MiB)
    r = await engine.copy(_request(clients(src.url), clients(dst.url), "o/retry"))
    assert inspect_raw(registry2, "o/retry", "v1") == img.manifest
    assert r.progress.bytes_done == layer.size  # the broken PATCH's bytes were taken back
    (get,) = _layer_gets(src, layer.digest)  # the retry read the spool, not the source
    assert get.last_response_byte is not None
    patches = dst.find("PATCH", r"/o/retry/blobs/uploads/")
    assert len(patches) >= 2
    assert patches[0].request_bytes == 1 * MiB  # the cut one
    # The retry started while the spool file was still being written.
    assert patches[1].start < get.last_response_byte
    assert len(_commits(dst, layer.digest)) == 1
    assert list(engine.spool_dir.iterdir()) == []


async def test_stalled_source_ends_the_upload_request_and_continues(
    registry: RegistryProcess,
    registry2: RegistryProcess,
    images: ImageBuilder,
    engine: CopyEngine,
    clients,
    pacing_proxy,
) -> None:
    engine.mover.idle_cut = 0.2
    img = images.image("v1", layers=[3 * MiB])
    push(img, registry, "o/stall")
    await _seed_config(clients(registry2), "o/stall", img)
    layer = img.blobs[1]
    src, dst = pacing_proxy(registry.url), pacing_proxy(registry2.url)
    # After the first MiB (the spool writes whole MiBs): the upload has bytes to send first.
    src.pause(rf"/blobs/{layer.digest}$", at_byte=3 * MiB // 2, seconds=1.0)
    await engine.copy(_request(clients(src.url), clients(dst.url), "o/stall"))
    assert inspect_raw(registry2, "o/stall", "v1") == img.manifest
    patches = [e for e in dst.find("PATCH", r"/o/stall/blobs/uploads/") if e.request_bytes]
    # No request body sat idle through the pause: the first PATCH ended, a second went on.
    assert len(patches) >= 2
    assert patches[0].done is not None and patches[0].done < patches[-1].start
    assert sum(e.request_bytes for e in patches) == layer.size
    assert len(_layer_gets(src, layer.digest)) == 1


async def test_cancel_mid_overlap_removes_spool_files_and_the_upload(
    registry: RegistryProcess,
    registry2: RegistryProcess,
    images: ImageBuilder,
    engine: CopyEngine,
    clients,
    pacing_proxy,
) -> None:
    img = images.image("v1", layers=[6 * MiB])
    push(img, registry, "o/cancel")
    await _seed_config(clients(registry2), "o/cancel", img)
    layer = img.blobs[1]
    src, dst = pacing_proxy(registry.url), pacing_proxy(registry2.url)
    src.throttle(rf"/blobs/{layer.digest}$", 2 * MiB)  # three seconds
    req = _request(clients(src.url), clients(dst.url), "o/cancel")
    task = asyncio.create_task(engine.copy(req))
    for _ in range(200):
        await asyncio.sleep(0.02)
        patches = dst.find("PATCH", r"/o/cancel/blobs/uploads/")
        if patches and patches[0].request_bytes > 0:
            break
    (get,) = _layer_gets(src, layer.digest)
    assert get.done is None, "the download should still be running"
    assert patches and patches[0].request_bytes > 0, "the upload should be under way"
    assert list(engine.spool_dir.iterdir()), "the blob should be spooling"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert list(engine.spool_dir.iterdir()) == []
    assert engine.quota.used == 0
    assert dst.find("DELETE", r"/o/cancel/blobs/uploads/"), "the upload session was cancelled"
    assert _commits(dst, layer.digest) == []
    assert not registry2.blob_data_exists(layer.digest)
