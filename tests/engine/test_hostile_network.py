"""The engine under a network that lies or hangs: real registries behind the fault proxy.

A source silent mid-body is cut by the idle timeout and resumed a bounded number of times; a
lost answer to a commit is settled by asking the destination; a manifest lying about a blob
the destination already holds is an error and is never committed; a Retry-After beyond the
cap fails the copy at once (the job scheduler comes back later)."""

from __future__ import annotations

import json
import time

import pytest

from registry_client import RegistryClient, errors
from registry_testkit.faultproxy import FaultProxy
from registry_testkit.images import ImageRef
from registry_testkit.registry import RegistryProcess
from tests.support.images import ImageBuilder, inspect_raw, push
from transfer_service.engine import CopyEngine, CopyRequest, DescriptorMismatch

pytestmark = pytest.mark.registry

IDLE = 1.0


def _req(src: RegistryClient, dst: RegistryClient, repo: str, ref: str, **kw) -> CopyRequest:
    return CopyRequest(
        src=src,
        src_repo=repo,
        src_ref=ref,
        dst=dst,
        dst_repo=kw.pop("dst_repo", repo),
        dst_tag=kw.pop("dst_tag", ref),
        **kw,
    )


def _stalling_source(
    registry: RegistryProcess, images: ImageBuilder, fault_proxy, layer_size: int
) -> tuple[ImageRef, str, FaultProxy]:
    """`stall/app:v1` with one layer in `registry`, behind a fresh proxy; (image, the layer's
    path regex, proxy). The test adds the stall rules."""
    img = images.image("v1", layers=[layer_size])
    push(img, registry, "stall/app")
    return img, rf"/blobs/{img.blobs[1].digest}$", fault_proxy(registry.url)


async def _copy_stalled(engine: CopyEngine, clients, proxy: FaultProxy, dst) -> float:
    """Copy stall/app:v1 through `proxy` (idle timeout IDLE); seconds until Stalled."""
    t0 = time.monotonic()
    with pytest.raises(errors.Stalled):
        await engine.copy(_req(clients(proxy.url, idle_timeout=IDLE), dst, "stall/app", "v1"))
    return time.monotonic() - t0


@pytest.mark.parametrize("layer_size", [400_000, 2 << 20], ids=["streamed", "spooled"])
async def test_source_silent_mid_body_fails_within_the_bound(
    registry: RegistryProcess,
    registry2: RegistryProcess,
    images: ImageBuilder,
    engine: CopyEngine,
    clients,
    fault_proxy,
    layer_size: int,
) -> None:
    img, layer_path, proxy = _stalling_source(registry, images, fault_proxy, layer_size)
    # Every answer for the layer goes silent after 64 KiB and stays silent for minutes.
    proxy.stall(layer_path, times=None, after_bytes=64 << 10, seconds=300)
    elapsed = await _copy_stalled(engine, clients, proxy, clients(registry2))
    # One first read and `download_resumes` resumes, each cut after IDLE: not 150 s.
    gets = len(proxy.requests("GET", layer_path))
    assert gets == engine.mover.download_resumes + 1
    assert elapsed < gets * IDLE + 10
    assert not registry2.blob_exists("stall/app", img.blobs[1].digest)
    assert list(engine.spool_dir.iterdir()) == []


async def test_a_resume_that_brings_nothing_ends_the_download(
    registry: RegistryProcess,
    registry2: RegistryProcess,
    images: ImageBuilder,
    engine: CopyEngine,
    clients,
    fault_proxy,
) -> None:
    _, layer_path, proxy = _stalling_source(registry, images, fault_proxy, 400_000)
    proxy.stall(layer_path, times=1, after_bytes=100_000, seconds=300)
    # The resume (Range from 100000) sends its headers, then nothing.
    proxy.stall(layer_path, times=None, after_bytes=0, seconds=300)
    elapsed = await _copy_stalled(engine, clients, proxy, clients(registry2))
    # The first read stalled after progress, so it was resumed; the resume stalled where
    # it started, so the download ended there (no further resumes).
    assert len(proxy.requests("GET", layer_path)) == 2
    assert elapsed < 2 * IDLE + 10


async def test_source_that_never_answers_a_blob_get_fails_within_the_bound(
    registry: RegistryProcess,
    registry2: RegistryProcess,
    images: ImageBuilder,
    engine: CopyEngine,
    clients,
    fault_proxy,
) -> None:
    _, layer_path, proxy = _stalling_source(registry, images, fault_proxy, 400_000)
    proxy.delay(layer_path, 300, times=None, method="GET")  # no headers, ever
    elapsed = await _copy_stalled(engine, clients, proxy, clients(registry2))
    # The first GET stalled at byte 0, and so did its resume: the download ended there.
    assert len(proxy.requests("GET", layer_path)) == 2
    assert elapsed < 2 * IDLE + 10


async def test_one_stall_resumes_by_range_and_the_copy_succeeds(
    registry: RegistryProcess,
    registry2: RegistryProcess,
    images: ImageBuilder,
    engine: CopyEngine,
    clients,
    fault_proxy,
) -> None:
    img, layer_path, proxy = _stalling_source(registry, images, fault_proxy, 400_000)
    proxy.stall(layer_path, times=1, after_bytes=100_000, seconds=300)
    src = clients(proxy.url, idle_timeout=IDLE)
    r = await engine.copy(_req(src, clients(registry2), "stall/app", "v1"))
    assert r.digest == img.digest
    assert inspect_raw(registry2, "stall/app", "v1") == img.manifest
    assert len(proxy.requests("GET", layer_path)) == 2


@pytest.mark.parametrize("layer_size", [300_000, 2 << 20], ids=["streamed", "spooled"])
async def test_lost_answer_to_a_blob_commit_still_succeeds(
    registry: RegistryProcess,
    registry2: RegistryProcess,
    images: ImageBuilder,
    engine: CopyEngine,
    clients,
    fault_proxy,
    layer_size: int,
) -> None:
    img = images.image("v1", layers=[layer_size])
    push(img, registry, "lost/app")
    proxy: FaultProxy = fault_proxy(registry2.url)
    # Every commit is taken by the registry, and every answer to it is lost.
    proxy.drop_mid_body(r"/blobs/uploads/.+", times=None, method="PUT")
    r = await engine.copy(_req(clients(registry), clients(proxy.url), "lost/app", "v1"))
    assert r.digest == img.digest
    assert inspect_raw(registry2, "lost/app", "v1") == img.manifest
    # Each blob was uploaded once: settled by a HEAD, not by a second upload.
    posts = [q for _, _, q in proxy.requests("POST", r"/blobs/uploads/$")]
    assert len(posts) == len(img.blobs)
    for b in img.blobs:
        # Nothing says the destination has a streamed blob, so its session was opened by a
        # POST that would have mounted it from the repository itself: no HEAD before that.
        probed = b.size < engine.spool_threshold
        assert (f"mount={b.digest}&from=lost/app" in posts) == probed
        heads = len(proxy.requests("HEAD", rf"/blobs/{b.digest}$"))
        assert heads == (1 if probed else 2)  # (the skip check) + the settle
    assert r.progress.blobs_done == len(img.blobs)


async def test_lost_answer_to_the_manifest_push_still_succeeds(
    registry: RegistryProcess,
    registry2: RegistryProcess,
    images: ImageBuilder,
    engine: CopyEngine,
    clients,
    fault_proxy,
) -> None:
    img = images.image("v1", layers=[2000])
    push(img, registry, "lost/app")
    proxy: FaultProxy = fault_proxy(registry2.url)
    proxy.drop_mid_body(r"/manifests/v1$", times=None, method="PUT")
    dst = clients(proxy.url, max_attempts=2)
    r = await engine.copy(_req(clients(registry), dst, "lost/app", "v1"))
    assert r.digest == img.digest
    assert inspect_raw(registry2, "lost/app", "v1") == img.manifest
    assert proxy.requests("HEAD", r"/manifests/v1$")


async def _liar(registry: RegistryProcess, images: ImageBuilder, clients) -> tuple[str, str, int]:
    """Push an honest image as `v1` and, under `liar`, its manifest with the layer's size + 1.
    Returns (layer digest, liar manifest digest, the size it claims)."""
    img = images.image("v1", layers=[5000])
    push(img, registry, "lie/app")
    doc = json.loads(img.manifest)
    doc["layers"][0]["size"] += 1
    data = json.dumps(doc).encode()
    digest = await clients(registry).put_manifest("lie/app", "liar", data, img.media_type)
    return img.blobs[1].digest, digest, doc["layers"][0]["size"]


async def test_manifest_lying_about_a_skipped_blob_size_is_never_committed(
    registry: RegistryProcess,
    registry2: RegistryProcess,
    images: ImageBuilder,
    engine: CopyEngine,
    clients,
) -> None:
    layer, liar, claimed = await _liar(registry, images, clients)
    src, dst = clients(registry), clients(registry2)
    await engine.copy(_req(src, dst, "lie/app", "v1"))  # the honest blob is there now
    with pytest.raises(DescriptorMismatch) as info:
        await engine.copy(_req(src, dst, "lie/app", "liar"))
    assert layer in str(info.value)
    assert f"{claimed} bytes" in str(info.value) and f"{claimed - 1} bytes" in str(info.value)
    assert await dst.head_manifest("lie/app", liar) is None
    assert await dst.head_manifest("lie/app", "liar") is None


async def test_manifest_lying_about_a_mounted_blob_size_is_never_committed(
    registry: RegistryProcess, images: ImageBuilder, engine: CopyEngine, clients
) -> None:
    _, liar, _ = await _liar(registry, images, clients)
    rc = clients(registry)
    with pytest.raises(DescriptorMismatch):
        # Same registry: the layer is mounted from lie/app into lie/copy, then checked.
        await engine.copy(_req(rc, rc, "lie/app", "liar", dst_repo="lie/copy"))
    assert await rc.head_manifest("lie/copy", liar) is None
    assert await rc.head_manifest("lie/copy", "liar") is None


async def test_retry_after_beyond_the_cap_fails_the_copy_at_once(
    registry: RegistryProcess,
    registry2: RegistryProcess,
    images: ImageBuilder,
    engine: CopyEngine,
    clients,
    fault_proxy,
) -> None:
    img = images.image("v1", layers=[3000])
    push(img, registry, "later/app")
    layer = img.blobs[1]
    proxy: FaultProxy = fault_proxy(registry.url)
    proxy.status(rf"/blobs/{layer.digest}$", 503, times=None, retry_after="86400", method="GET")
    t0 = time.monotonic()
    with pytest.raises(errors.RetryAfterTooLong) as info:
        await engine.copy(_req(clients(proxy.url), clients(registry2), "later/app", "v1"))
    assert time.monotonic() - t0 < 5
    assert info.value.retry_after == 86400
    assert len(proxy.requests("GET", rf"/blobs/{layer.digest}$")) == 1


async def test_a_size_lie_about_a_blob_the_engine_verified_is_refused_before_mounting(
    registry: RegistryProcess, images: ImageBuilder, engine: CopyEngine, clients, fault_proxy
) -> None:
    layer, liar, _ = await _liar(registry, images, clients)
    proxy: FaultProxy = fault_proxy(registry.url)
    rc = clients(proxy.url)
    await engine.copy(_req(rc, rc, "lie/app", "v1", dst_repo="lie/first"))  # mounted, checked
    with pytest.raises(DescriptorMismatch):
        await engine.copy(_req(rc, rc, "lie/app", "liar", dst_repo="lie/copy"))

    def mounts(repo: str) -> list[str]:
        return [q for _, _, q in proxy.requests("POST", rf"^/v2/{repo}/blobs/uploads/$")]

    assert any(layer in q for q in mounts("lie/first"))
    assert not any(layer in q for q in mounts("lie/copy"))  # the lying layer: never mounted
    assert await rc.head_manifest("lie/copy", liar) is None
