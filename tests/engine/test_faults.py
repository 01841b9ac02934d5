"""Engine under faults injected by a proxy in front of real registries."""

from __future__ import annotations

import pytest

from registry_client import errors
from registry_testkit.registry import RegistryProcess
from tests.support.images import ImageBuilder, inspect_raw, push
from transfer_service.engine import CopyEngine, CopyRequest

pytestmark = pytest.mark.registry


@pytest.mark.parametrize("layer_size", [200_000, 2 << 20], ids=["streamed", "spooled"])
async def test_corrupted_byte_is_detected_and_never_committed(
    registry: RegistryProcess,
    registry2: RegistryProcess,
    images: ImageBuilder,
    engine: CopyEngine,
    clients,
    fault_proxy,
    layer_size: int,
) -> None:
    img = images.image("v1", layers=[layer_size])
    push(img, registry, "c/app")
    layer = img.blobs[1]
    src_proxy, dst_proxy = fault_proxy(registry.url), fault_proxy(registry2.url)
    src_proxy.corrupt_blob(layer.digest, times=None, offset=layer_size // 2)
    with pytest.raises(errors.DigestMismatch):
        await engine.copy(
            CopyRequest(
                src=clients(src_proxy.url),
                src_repo="c/app",
                src_ref="v1",
                dst=clients(dst_proxy.url),
                dst_repo="c/app",
                dst_tag="v1",
            )
        )
    # Our check fired: the commit (PUT ?digest=<layer>) was never sent for the bad blob...
    commits = [q for _, _, q in dst_proxy.requests("PUT", r"/blobs/uploads/")]
    assert not [q for q in commits if layer.digest.replace(":", "%3A") in q or layer.digest in q]
    # ...the engine tried every attempt, each one corrupted...
    assert len(src_proxy.requests("GET", layer.digest)) == engine.mover.attempts
    # ...and the destination has neither the blob nor a manifest naming it.
    assert not registry2.blob_data_exists(layer.digest)
    assert not registry2.blob_exists("c/app", layer.digest)
    assert list(engine.spool_dir.iterdir()) == []


async def test_one_corrupted_transfer_is_retried(
    registry: RegistryProcess,
    registry2: RegistryProcess,
    images: ImageBuilder,
    engine: CopyEngine,
    clients,
    fault_proxy,
) -> None:
    img = images.image("v1", layers=[300_000])
    push(img, registry, "c/app")
    proxy = fault_proxy(registry.url)
    proxy.corrupt_blob(img.blobs[1].digest, times=1, offset=10)
    await engine.copy(
        CopyRequest(
            src=clients(proxy.url),
            src_repo="c/app",
            src_ref="v1",
            dst=clients(registry2),
            dst_repo="c/app",
            dst_tag="v1",
        )
    )
    assert inspect_raw(registry2, "c/app", "v1") == img.manifest
    assert len(proxy.requests("GET", img.blobs[1].digest)) == 2


async def test_429_and_dropped_connections_are_retried_to_completion(
    registry: RegistryProcess,
    registry2: RegistryProcess,
    images: ImageBuilder,
    engine: CopyEngine,
    clients,
    fault_proxy,
) -> None:
    img = images.index("v1", platforms=["linux/amd64", "linux/arm64/v8"], layers=[400_000, 3 << 20])
    push(img, registry, "r/app")
    small, big = img.children[0].blobs[1], img.children[0].blobs[2]
    src_proxy, dst_proxy = fault_proxy(registry.url), fault_proxy(registry2.url)
    src_proxy.status(r"/manifests/", 429, times=2, retry_after="0")
    src_proxy.drop_mid_body(rf"/blobs/{small.digest}$", times=2, after_bytes=100_000)
    src_proxy.drop_mid_body(rf"/blobs/{big.digest}$", times=1, after_bytes=1 << 20)
    dst_proxy.status(r"/blobs/uploads/$", 429, times=3, retry_after="1", method="POST")
    dst_proxy.status(r"/blobs/uploads/", 503, times=1, method="PATCH")
    dst_proxy.drop_mid_body(r"/blobs/uploads/", times=1, method="PATCH")
    r = await engine.copy(
        CopyRequest(
            src=clients(src_proxy.url),
            src_repo="r/app",
            src_ref="v1",
            dst=clients(dst_proxy.url),
            dst_repo="r/app",
            dst_tag="v1",
        )
    )
    assert r.digest == img.digest
    raw = inspect_raw(registry2, "r/app", "v1")
    assert raw == img.manifest
    for child in img.children:
        assert inspect_raw(registry2, "r/app", child.digest) == child.manifest
    # Every injected fault fired, and broken downloads resumed with Range requests.
    assert all(rule.fired == rule.times for rule in src_proxy.rules + dst_proxy.rules)
    assert r.progress.bytes_done == r.progress.bytes_total


async def test_broken_spooled_upload_is_redone_from_disk_without_downloading_again(
    registry: RegistryProcess,
    registry2: RegistryProcess,
    images: ImageBuilder,
    tmp_path,
    clients,
    fault_proxy,
) -> None:
    engine = CopyEngine(tmp_path / "spool0", spool_threshold=0, backoff_base=0.01)
    img = images.image("v1", layers=[3 << 20])
    push(img, registry, "u/app")
    src_proxy, proxy = fault_proxy(registry.url), fault_proxy(registry2.url)
    # The registry takes the PATCH but the answer is lost: the engine asks where the upload
    # stands (2.8.2 then reports the session invalid) and uploads again from the spool file.
    proxy.drop_mid_body(r"/blobs/uploads/", times=1, method="PATCH")
    await engine.copy(
        CopyRequest(
            src=clients(src_proxy.url),
            src_repo="u/app",
            src_ref="v1",
            dst=clients(proxy.url),
            dst_repo="u/app",
            dst_tag="v1",
        )
    )
    assert inspect_raw(registry2, "u/app", "v1") == img.manifest
    assert proxy.requests("GET", r"/blobs/uploads/")  # the upload status query
    assert len(proxy.requests("PATCH", r"/blobs/uploads/")) == 3
    for blob in img.blobs:  # each blob was downloaded exactly once
        assert len(src_proxy.requests("GET", blob.digest)) == 1
