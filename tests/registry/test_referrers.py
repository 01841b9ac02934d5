"""RegistryClient.list_referrers: the OCI referrers API where there is one, else the
`sha256-<hex>` tag index (docker-registry 2.8.2, which answers the API with a plain 404)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from registry_client import RegistryClient, RegistryConfig
from registry_client.errors import RegistryError
from registry_testkit.images import ImageBuilder, push
from registry_testkit.registry import RegistryProcess
from tests.engine import referrer_artifacts as art
from tests.registry.referrers_shim import ReferrersShim
from transfer_service.engine import CopiedReferrer, CopyEngine, CopyRequest

pytestmark = pytest.mark.registry

COSIGN_SIG = "application/vnd.dev.cosign.artifact.sig.v1+json"


@pytest.fixture
def shim(registry: RegistryProcess) -> Iterator[ReferrersShim]:
    with ReferrersShim(registry.url) as s:
        yield s


def _client(url: str) -> RegistryClient:
    return RegistryClient(RegistryConfig(url=url, backoff_base=0.01))


async def test_without_the_api_the_tag_index_is_read_and_filtered(
    registry: RegistryProcess, images: ImageBuilder, tmp_path: Path
) -> None:
    img = images.image("1.0")
    push(img, registry, "dev/app")
    async with _client(registry.url) as rc:
        assert await rc.list_referrers("dev/app", img.digest) == []  # no index tag: none
        assert not await rc.has_referrers_api("dev/app", img.digest)
        sbom = art.push_sbom(registry, "dev/app", img.digest, len(img.manifest), tmp_path / "a")
        sig = art.push_sbom(
            registry,
            "dev/app",
            img.digest,
            len(img.manifest),
            tmp_path / "b",
            name="sig",
            media_type=COSIGN_SIG,
        )
        listed = await rc.list_referrers("dev/app", img.digest)
        assert [(r.digest, r.artifact_type) for r in listed] == [
            (sbom.digest, art.SPDX),
            (sig.digest, COSIGN_SIG),
        ]
        only = await rc.list_referrers("dev/app", img.digest, COSIGN_SIG)
        assert [r.digest for r in only] == [sig.digest]
        with pytest.raises(RegistryError, match="sha256 digest"):
            await rc.list_referrers("dev/app", "1.0")


async def test_the_api_is_used_where_there_is_one_every_page_and_filter(
    registry: RegistryProcess, shim: ReferrersShim, images: ImageBuilder, tmp_path: Path
) -> None:
    img = images.image("1.0")
    push(img, registry, "dev/app")
    # Pushed through the API registry: no tag index is kept (the registry lists them).
    sbom = art.push_sbom(
        shim, "dev/app", img.digest, len(img.manifest), tmp_path / "a", tag_index=False
    )
    sig = art.push_sbom(
        shim,
        "dev/app",
        img.digest,
        len(img.manifest),
        tmp_path / "b",
        name="sig",
        media_type=COSIGN_SIG,
        tag_index=False,
    )
    shim.log.clear()
    async with _client(shim.url) as rc:
        assert await rc.has_referrers_api("dev/app", img.digest)
        listed = await rc.list_referrers("dev/app", img.digest)
        assert [r.digest for r in listed] == [sbom.digest, sig.digest]  # two pages of one
        assert [r.digest for r in await rc.list_referrers("dev/app", img.digest, art.SPDX)] == [
            sbom.digest
        ]
    assert len(shim.requests("GET", r"/referrers/")) == 1 + 2 + 1
    assert not shim.requests("GET", r"/manifests/sha256-")  # the tag schema was not needed


async def test_a_referrers_api_that_links_a_page_to_itself_is_refused(
    registry: RegistryProcess, shim: ReferrersShim, images: ImageBuilder
) -> None:
    img = images.image("1.0")
    push(img, registry, "dev/app")
    shim.self_link = True
    async with _client(shim.url) as rc:
        with pytest.raises(RegistryError, match="too many pages"):
            await rc.list_referrers("dev/app", img.digest)


async def test_copy_to_a_registry_with_the_api_writes_no_tag_index(
    registry: RegistryProcess, registry2: RegistryProcess, images: ImageBuilder, tmp_path: Path
) -> None:
    img = images.image("1.0")
    push(img, registry, "dev/app")
    sbom = art.push_sbom(registry, "dev/app", img.digest, len(img.manifest), tmp_path / "a")
    engine = CopyEngine(tmp_path / "spool", backoff_base=0.01)
    with ReferrersShim(registry2.url, page_size=10) as dst_api:
        async with _client(registry.url) as src, _client(dst_api.url) as dst:
            r = await engine.copy(
                CopyRequest(
                    src=src,
                    src_repo="dev/app",
                    src_ref="1.0",
                    dst=dst,
                    dst_repo="qa/app",
                    dst_tag="1.0",
                    copy_referrers=("sboms",),
                )
            )
            assert r.referrers == [CopiedReferrer(sbom.digest, "sbom", "")]
            assert [x.digest for x in await dst.list_referrers("qa/app", img.digest)] == [
                sbom.digest
            ]
    assert art.tags(registry2, "qa/app") == ["1.0"]  # no sha256-<hex> index tag
    assert (
        art.manifest(registry2, "qa/app", sbom.digest)[1]
        == art.manifest(registry, "dev/app", sbom.digest)[1]
    )


def test_subject_of_reads_what_a_manifest_is_attached_to() -> None:
    from registry_client.referrers import subject_of

    digest = "sha256:" + "ab" * 32
    assert subject_of(json.dumps({"subject": {"digest": digest, "size": 1}}).encode()) == digest
    for unattached in (b"{}", b"not json", b"[]", json.dumps({"subject": "x"}).encode(),
                       json.dumps({"subject": {"digest": 7}}).encode()):
        assert subject_of(unattached) is None, unattached
