"""Copies between real docker-registry processes; skopeo checks the results byte for byte."""

from __future__ import annotations

import asyncio
import json

import pytest

from registry_testkit.registry import RegistryProcess
from tests.support.images import ImageBuilder, digest_of, inspect_raw, list_tags, push
from transfer_service.engine import (
    CopyEngine,
    CopyProgress,
    CopyRequest,
    InvalidReference,
    PlatformFilterError,
    TagExists,
)

pytestmark = pytest.mark.registry


def _same_on_both_sides(
    src: RegistryProcess,
    src_repo: str,
    dst: RegistryProcess,
    dst_repo: str,
    ref: str,
    dst_ref: str | None = None,
) -> bytes:
    raw = inspect_raw(src, src_repo, ref)
    assert inspect_raw(dst, dst_repo, dst_ref or ref) == raw
    return raw


@pytest.mark.parametrize("docker", [False, True], ids=["oci", "docker"])
async def test_index_copied_with_identical_digests(
    registry: RegistryProcess,
    registry2: RegistryProcess,
    images: ImageBuilder,
    engine: CopyEngine,
    clients,
    docker: bool,
) -> None:
    img = images.index(
        "1.4-stable",
        platforms=["linux/amd64", "linux/arm64/v8", "linux/s390x"],
        layers=[20_000, 5_000],
        shared_layers=[7_000],
        docker=docker,
    )
    push(img, registry, "dev/website")
    seen: list[CopyProgress] = []
    result = await engine.copy(
        CopyRequest(
            src=clients(registry),
            src_repo="dev/website",
            src_ref="1.4-stable",
            dst=clients(registry2),
            dst_repo="qa/website",
            dst_tag="20261126-1530",
        ),
        progress=seen.append,
    )
    assert result.digest == img.digest and result.pushed_index
    raw = _same_on_both_sides(
        registry, "dev/website", registry2, "qa/website", "1.4-stable", "20261126-1530"
    )
    assert json.loads(raw)["mediaType"] == img.media_type
    for child in img.children:
        assert digest_of(registry2, "qa/website", child.digest) == child.digest
    p = result.progress
    unique = img.all_blobs()
    assert p.blobs_total == len(unique) == p.blobs_done  # shared layer counted once
    assert p.bytes_total == p.bytes_done == sum(b.size for b in unique)
    assert p.manifests_total == p.manifests_done == 4
    assert seen and seen[-1].blobs_done == p.blobs_done
    assert list_tags(registry2, "qa/website") == ["20261126-1530"]


@pytest.mark.parametrize("docker", [False, True], ids=["oci", "docker"])
async def test_single_manifest_by_tag_and_by_digest(
    registry: RegistryProcess,
    registry2: RegistryProcess,
    images: ImageBuilder,
    engine: CopyEngine,
    clients,
    docker: bool,
) -> None:
    img = images.image("v1", layers=[10_000, 3_000], docker=docker, labels={"a": "b"})
    push(img, registry, "one/app")
    src, dst = clients(registry), clients(registry2)
    r = await engine.copy(
        CopyRequest(
            src=src, src_repo="one/app", src_ref="v1", dst=dst, dst_repo="one/app", dst_tag="v1"
        )
    )
    assert r.digest == img.digest and not r.pushed_index
    _same_on_both_sides(registry, "one/app", registry2, "one/app", "v1")
    r = await engine.copy(
        CopyRequest(
            src=src, src_repo="one/app", src_ref=img.digest, dst=dst, dst_repo="bydigest/app"
        )
    )
    assert r.digest == img.digest
    assert inspect_raw(registry2, "bydigest/app", img.digest) == img.manifest
    assert list_tags(registry2, "bydigest/app") == []


async def test_second_copy_skips_everything(
    registry: RegistryProcess,
    registry2: RegistryProcess,
    images: ImageBuilder,
    engine: CopyEngine,
    clients,
    fault_proxy,
) -> None:
    img = images.index("v1", layers=[30_000])
    push(img, registry, "s/app")
    proxy = fault_proxy(registry2.url)
    req = CopyRequest(
        src=clients(registry),
        src_repo="s/app",
        src_ref="v1",
        dst=clients(proxy.url),
        dst_repo="s/app",
        dst_tag="v1",
    )
    await engine.copy(req)
    uploads_before = len(proxy.requests("POST", r"/blobs/uploads/$"))
    again = await CopyEngine(engine.spool_dir).copy(req)  # a fresh engine: no memory of it
    p = again.progress
    assert p.blobs_skipped == p.blobs_total > 0 and p.blobs_done == 0 and p.bytes_done == 0
    assert len(proxy.requests("POST", r"/blobs/uploads/$")) == uploads_before
    _same_on_both_sides(registry, "s/app", registry2, "s/app", "v1")


async def test_second_repository_uses_mount(
    registry: RegistryProcess,
    registry2: RegistryProcess,
    images: ImageBuilder,
    engine: CopyEngine,
    clients,
    fault_proxy,
) -> None:
    img = images.image("v1", layers=[40_000, 20_000])
    push(img, registry, "m/app")
    proxy = fault_proxy(registry2.url)
    src, dst = clients(registry), clients(proxy.url)
    await engine.copy(
        CopyRequest(
            src=src, src_repo="m/app", src_ref="v1", dst=dst, dst_repo="team-a/app", dst_tag="v1"
        )
    )
    r = await engine.copy(
        CopyRequest(
            src=src, src_repo="m/app", src_ref="v1", dst=dst, dst_repo="team-b/app", dst_tag="v1"
        )
    )
    assert r.progress.blobs_mounted == r.progress.blobs_total == 3
    assert r.progress.bytes_done == 0
    mounts = proxy.requests("POST", r"/team-b/app/blobs/uploads/$")
    assert len(mounts) == 3 and all("from=team-a" in q for _, _, q in mounts)
    assert not proxy.requests("PATCH", "team-b")
    _same_on_both_sides(registry, "m/app", registry2, "team-b/app", "v1")


async def test_same_registry_promotion_mounts_from_source_repo(
    registry: RegistryProcess,
    images: ImageBuilder,
    engine: CopyEngine,
    clients,
) -> None:
    img = images.image("v1", layers=[10_000])
    push(img, registry, "dev/app")
    rc = clients(registry)
    r = await engine.copy(
        CopyRequest(
            src=rc, src_repo="dev/app", src_ref="v1", dst=rc, dst_repo="prod/app", dst_tag="v1"
        )
    )
    assert r.progress.blobs_mounted == 2 and engine.downloads == 0
    assert inspect_raw(registry, "prod/app", "v1") == img.manifest


async def test_platform_filter(
    registry: RegistryProcess,
    registry2: RegistryProcess,
    images: ImageBuilder,
    engine: CopyEngine,
    clients,
) -> None:
    img = images.index("v1", platforms=["linux/amd64", "linux/arm64/v8", "linux/s390x"])
    push(img, registry, "f/app")
    src, dst = clients(registry), clients(registry2)

    def req(platforms: list[str]) -> CopyRequest:
        return CopyRequest(
            src=src,
            src_repo="f/app",
            src_ref="v1",
            dst=dst,
            dst_repo="f/app",
            dst_tag="v1",
            platforms=platforms,
        )

    with pytest.raises(PlatformFilterError):
        await engine.copy(req(["windows/amd64"]))
    with pytest.raises(PlatformFilterError):  # 2 of 3 while the third is missing
        await engine.copy(req(["linux/amd64", "linux/s390x"]))
    assert list_tags(registry2, "f/app") == []  # refused before anything was tagged
    one = await engine.copy(req(["linux/arm64"]))  # any variant
    assert one.digest == img.children[1].digest and not one.pushed_index
    assert inspect_raw(registry2, "f/app", "v1") == img.children[1].manifest
    # Later the remaining platforms arrive: now the original index can be pushed.
    two = await engine.copy(req(["linux/amd64", "linux/s390x"]))
    assert two.digest == img.digest and two.pushed_index
    _same_on_both_sides(registry, "f/app", registry2, "f/app", "v1")


async def test_tag_exists_fails_only_when_asked(
    registry: RegistryProcess,
    registry2: RegistryProcess,
    images: ImageBuilder,
    engine: CopyEngine,
    clients,
) -> None:
    a, b = images.image("a"), images.image("b")
    push(a, registry, "t/app")
    push(b, registry, "t/app")
    src, dst = clients(registry), clients(registry2)
    await engine.copy(
        CopyRequest(
            src=src, src_repo="t/app", src_ref="a", dst=dst, dst_repo="t/app", dst_tag="prod"
        )
    )
    with pytest.raises(TagExists):
        await engine.copy(
            CopyRequest(
                src=src,
                src_repo="t/app",
                src_ref="b",
                dst=dst,
                dst_repo="t/app",
                dst_tag="prod",
                fail_if_tag_exists=True,
            )
        )
    assert digest_of(registry2, "t/app", "prod") == a.digest
    # Same digest is not a conflict; another digest is overwritten by default.
    await engine.copy(
        CopyRequest(
            src=src,
            src_repo="t/app",
            src_ref="a",
            dst=dst,
            dst_repo="t/app",
            dst_tag="prod",
            fail_if_tag_exists=True,
        )
    )
    await engine.copy(
        CopyRequest(
            src=src, src_repo="t/app", src_ref="b", dst=dst, dst_repo="t/app", dst_tag="prod"
        )
    )
    assert digest_of(registry2, "t/app", "prod") == b.digest


async def test_bad_references_rejected_before_any_request(engine: CopyEngine, clients) -> None:
    rc = clients("http://127.0.0.1:9")  # nothing listens: a request would fail differently
    for kw in (
        {"src_repo": "Bad/Name"},
        {"src_ref": "no spaces"},
        {"dst_tag": "-x"},
        {"platforms": ["linux"]},
    ):
        args = {
            "src": rc,
            "src_repo": "a/b",
            "src_ref": "v1",
            "dst": rc,
            "dst_repo": "c/d",
            "dst_tag": "t",
            **kw,
        }
        with pytest.raises(InvalidReference):
            await engine.copy(CopyRequest(**args))


async def test_concurrent_copies_download_shared_blob_once(
    registry: RegistryProcess,
    registry2: RegistryProcess,
    images: ImageBuilder,
    engine: CopyEngine,
    clients,
    fault_proxy,
) -> None:
    img = images.image("v1", layers=[200_000, 300_000])
    push(img, registry, "c/app")
    proxy = fault_proxy(registry.url)
    proxy.delay(r"/blobs/sha256:", 0.3, method="GET")
    src, dst = clients(proxy.url), clients(registry2)
    results = await asyncio.gather(
        *(
            engine.copy(
                CopyRequest(
                    src=src,
                    src_repo="c/app",
                    src_ref="v1",
                    dst=dst,
                    dst_repo=f"c/app{i}",
                    dst_tag="v1",
                )
            )
            for i in range(3)
        )
    )
    assert len(proxy.requests("GET", r"/blobs/sha256:")) == 3  # config + 2 layers, once each
    assert sum(r.progress.blobs_mounted for r in results) == 6
    for i in range(3):
        assert inspect_raw(registry2, f"c/app{i}", "v1") == img.manifest


async def test_large_blob_goes_through_spool_and_spool_is_emptied(
    registry: RegistryProcess,
    registry2: RegistryProcess,
    images: ImageBuilder,
    engine: CopyEngine,
    clients,
) -> None:
    img = images.image("big", layers=[3 << 20, 200_000])
    push(img, registry, "big/app")
    r = await engine.copy(
        CopyRequest(
            src=clients(registry),
            src_repo="big/app",
            src_ref="big",
            dst=clients(registry2),
            dst_repo="big/app",
            dst_tag="big",
        )
    )
    assert r.progress.bytes_done == img.total_blob_bytes
    assert engine.quota.peak >= 3 << 20  # the big layer reserved spool space
    assert list(engine.spool_dir.iterdir()) == []
    _same_on_both_sides(registry, "big/app", registry2, "big/app", "big")


async def test_cancel_removes_spool_files(
    registry: RegistryProcess,
    registry2: RegistryProcess,
    images: ImageBuilder,
    engine: CopyEngine,
    clients,
    fault_proxy,
) -> None:
    img = images.image("big", layers=[4 << 20])
    push(img, registry, "x/app")
    proxy = fault_proxy(registry2.url)
    proxy.delay(r"/blobs/uploads/", 5.0, method="PATCH")  # stall the upload from the spool
    task = asyncio.create_task(
        engine.copy(
            CopyRequest(
                src=clients(registry),
                src_repo="x/app",
                src_ref="big",
                dst=clients(proxy.url),
                dst_repo="x/app",
                dst_tag="big",
            )
        )
    )
    for _ in range(100):
        await asyncio.sleep(0.05)
        if proxy.requests("PATCH", "/x/app/"):
            break
    assert list(engine.spool_dir.iterdir()), "the blob should be spooled by now"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert list(engine.spool_dir.iterdir()) == []
    assert engine.quota.used == 0
