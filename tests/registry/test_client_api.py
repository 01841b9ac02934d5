"""registry_client against a real docker-registry 2.8.2; skopeo pushes and checks."""

from __future__ import annotations

import hashlib
import json

import pytest

from registry_client import RegistryClient, errors, mediatypes, sha256_digest
from registry_testkit.registry import RegistryProcess
from tests.support.images import ImageBuilder, inspect_raw, list_tags, push

pytestmark = pytest.mark.registry


async def test_manifests_of_all_four_media_types_are_byte_exact(
    registry: RegistryProcess, images: ImageBuilder
) -> None:
    oci = images.index("oci", platforms=["linux/amd64", "linux/arm64/v8"])
    dock = images.index("dock", platforms=["linux/amd64", "linux/s390x"], docker=True)
    push(oci, registry, "all/types")
    push(dock, registry, "all/types")
    async with RegistryClient(registry.client_config()) as rc:
        seen = set()
        for img in (oci, dock):
            for ref, want in [(img.tag, img), *[(c.digest, c) for c in img.children]]:
                m = await rc.get_manifest("all/types", ref)
                assert m.data == inspect_raw(registry, "all/types", ref)
                assert m.digest == want.digest
                assert m.media_type == want.media_type
                d = await rc.head_manifest("all/types", ref)
                assert d is not None and (d.digest, d.size) == (want.digest, len(want.manifest))
                seen.add(m.media_type)
        assert seen == set(mediatypes.MANIFEST_TYPES)


async def test_missing_things_raise_not_found_or_none(registry: RegistryProcess) -> None:
    async with RegistryClient(registry.client_config()) as rc:
        with pytest.raises(errors.NotFound) as ei:
            await rc.get_manifest("no/such", "latest")
        assert ei.value.code in ("NAME_UNKNOWN", "MANIFEST_UNKNOWN")
        assert await rc.head_manifest("no/such", "latest") is None
        assert await rc.blob_size("no/such", "sha256:" + "0" * 64) is None
        with pytest.raises(errors.NotFound):
            await rc.list_tags("no/such")


async def test_invalid_name_plain_text_error_is_typed(registry: RegistryProcess) -> None:
    async with RegistryClient(registry.client_config()) as rc:
        # 2.8.2 answers an invalid repository name with a plain-text 404, not JSON.
        with pytest.raises(errors.NotFound) as ei:
            await rc.get_manifest("UPPER/Case", "x")
        assert ei.value.status == 404


async def test_push_pulled_manifest_keeps_digest(
    registry: RegistryProcess, images: ImageBuilder
) -> None:
    img = images.image("v1", layers=[3000])
    push(img, registry, "src/app")
    async with RegistryClient(registry.client_config()) as rc:
        for blob in img.blobs:
            assert await rc.mount_blob("dst/app", blob.digest, "src/app") is True
        m = await rc.get_manifest("src/app", "v1")
        digest = await rc.put_manifest("dst/app", "copied", m.data, m.media_type)
    assert digest == img.digest
    assert inspect_raw(registry, "dst/app", "copied") == img.manifest


async def test_blob_download_full_and_ranged(
    registry: RegistryProcess, images: ImageBuilder
) -> None:
    img = images.image("v1", layers=[300_000])
    push(img, registry, "blobs/app")
    layer = img.blobs[1]
    content = img.layout.joinpath("blobs", "sha256", layer.digest.split(":")[1]).read_bytes()
    async with RegistryClient(registry.client_config()) as rc:
        assert await rc.blob_size("blobs/app", layer.digest) == layer.size
        async with rc.open_blob("blobs/app", layer.digest) as body:
            got = b"".join([c async for c in body.iter_chunks(65536)])
            assert body.size == layer.size
        assert got == content
        async with rc.open_blob("blobs/app", layer.digest, offset=100_000) as body:
            tail = b"".join([c async for c in body.iter_chunks()])
            assert body.size == layer.size and body.offset == 100_000
        assert tail == content[100_000:]


async def test_uploads_monolithic_chunked_resumed_and_cancelled(registry: RegistryProcess) -> None:
    data = hashlib.sha512(b"seed").digest() * 40_000  # 2.5 MB
    digest = sha256_digest(data)
    async with RegistryClient(registry.client_config()) as rc:
        # Monolithic.
        assert await rc.upload_blob("up/mono", digest, data) == digest
        assert await rc.blob_size("up/mono", digest) == len(data)
        # Chunked with bytes, then a stream, then a resume from the registry's status.
        up = await rc.start_upload("up/chunked")
        up = await rc.upload_chunk(up, data[:1_000_000])
        assert up.offset == 1_000_000

        async def stream():
            for i in range(1_000_000, 2_000_000, 250_000):
                yield data[i : i + 250_000]

        up = await rc.upload_chunk(up, stream())
        assert up.offset == 2_000_000
        assert await rc.upload_status(up) == 2_000_000
        status = await rc.resume_upload(up)
        assert status.offset == 2_000_000
        status = await rc.upload_chunk(status, data[status.offset :])
        await rc.finish_upload(status, digest)
        assert await rc.blob_size("up/chunked", digest) == len(data)
        # A wrong digest at PUT is refused by the registry and typed.
        up = await rc.start_upload("up/bad")
        up = await rc.upload_chunk(up, data[:1000])
        with pytest.raises(errors.RegistryError) as ei:
            await rc.finish_upload(up, digest)
        assert ei.value.code in ("DIGEST_INVALID", "BLOB_UPLOAD_INVALID", "SIZE_INVALID")
        # Cancel: the session is gone afterwards.
        up = await rc.start_upload("up/cancel")
        await rc.cancel_upload(up)
        with pytest.raises(errors.NotFound):
            await rc.upload_status(up)


async def test_mount_needs_from_and_reports_202_as_false(
    registry: RegistryProcess, images: ImageBuilder
) -> None:
    img = images.image("v1", layers=[2000])
    push(img, registry, "mnt/src")
    layer = img.blobs[1].digest
    async with RegistryClient(registry.client_config()) as rc:
        assert await rc.mount_blob("mnt/other", layer, "mnt/nowhere") is False
        assert await rc.blob_size("mnt/other", layer) is None
        assert await rc.mount_blob("mnt/other", layer, "mnt/src") is True
        assert await rc.blob_size("mnt/other", layer) == img.blobs[1].size


async def test_list_tags_follows_link_pagination(
    registry: RegistryProcess, images: ImageBuilder
) -> None:
    img = images.image("t0")
    names = [f"t{i}" for i in range(7)]
    for t in names:
        push(img, registry, "tags/app", tag=t)
    async with RegistryClient(registry.client_config()) as rc:
        paged = await rc.list_tags("tags/app", page_size=2)
        whole = await rc.list_tags("tags/app")
    assert sorted(paged) == sorted(names) == sorted(list_tags(registry, "tags/app"))
    assert paged == whole
    assert json.loads(inspect_raw(registry, "tags/app", "t6"))["schemaVersion"] == 2


async def test_large_manifest_read_whole(registry: RegistryProcess, images: ImageBuilder) -> None:
    # ~40 KB of manifest arrives in several network reads; all of it must be returned.
    img = images.image("many", layers=[200] * 160)
    push(img, registry, "large/manifest")
    assert len(img.manifest) > 30_000
    async with RegistryClient(registry.client_config()) as rc:
        m = await rc.get_manifest("large/manifest", "many")
    assert m.data == img.manifest and m.digest == img.digest
