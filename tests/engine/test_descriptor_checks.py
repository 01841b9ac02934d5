"""On the skip path, an index's word about its children is checked against what the
registries say (issue 10, finding 8 and "sizes and media types from the manifest are checked
against the destination's HEAD; a mismatch is an error, never a commit").

Real docker-registry processes (registry_testkit); the fault proxy in front of one to record
what was asked, or to play a destination that lies in its HEAD answers. Each lying index is
refused with DescriptorMismatch, and neither it nor the tag it was copied to reaches the
destination.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from registry_client import RegistryClient
from registry_testkit.faultproxy import FaultProxy
from registry_testkit.images import ImageRef
from registry_testkit.registry import RegistryProcess
from tests.support.images import ImageBuilder, push
from transfer_service.engine import CopyEngine, CopyRequest, DescriptorMismatch

pytestmark = pytest.mark.registry

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
Clients = Callable[..., RegistryClient]


def _req(src: RegistryClient, dst: RegistryClient, ref: str, tag: str, **kw: Any) -> CopyRequest:
    return CopyRequest(src=src, src_repo="idx/app", src_ref=ref, dst=dst, dst_repo="idx/app",
                       dst_tag=tag, **kw)


async def _mirrored_index(
    registry: RegistryProcess, registry2: RegistryProcess, images: ImageBuilder,
    engine: CopyEngine, clients: Clients,
) -> ImageRef:
    """An honest amd64 + arm64 index pushed as idx/app:rel and copied whole to registry2:
    both children are at the destination by digest."""
    idx = images.index("rel", platforms=("linux/amd64", "linux/arm64/v8"), layers=[2000])
    push(idx, registry, "idx/app")
    await engine.copy(_req(clients(registry), clients(registry2), "rel", "rel"))
    dst = clients(registry2)
    for child in idx.children:
        assert await dst.head_manifest("idx/app", child.digest) is not None
    return idx


async def _lying_index(
    registry: RegistryProcess, clients: Clients, idx: ImageRef, entry: int, **lie: Any
) -> str:
    """idx/app:liar at the source: `idx` with manifests[entry] changed by `lie`. The registry
    checks only that the children exist, not what the index says about them."""
    doc = json.loads(idx.manifest)
    doc["manifests"][entry].update(lie)
    data = json.dumps(doc).encode()
    return await clients(registry).put_manifest("idx/app", "liar", data, OCI_INDEX)


async def _nothing_committed(dst: RegistryClient, digest: str, tag: str) -> None:
    assert await dst.head_manifest("idx/app", digest) is None
    assert await dst.head_manifest("idx/app", tag) is None


async def test_an_index_lying_about_a_held_childs_size_is_never_committed(
    registry: RegistryProcess, registry2: RegistryProcess, images: ImageBuilder,
    engine: CopyEngine, clients: Clients,
) -> None:
    idx = await _mirrored_index(registry, registry2, images, engine, clients)
    arm = idx.children[1]
    liar = await _lying_index(registry, clients, idx, 1, size=len(arm.manifest) + 7)
    dst = clients(registry2)
    with pytest.raises(DescriptorMismatch) as info:
        await engine.copy(_req(clients(registry), dst, "liar", "liar"))
    said = str(info.value)
    assert arm.digest in said and "nothing committed" in said
    assert f"{len(arm.manifest) + 7} bytes" in said and f"{len(arm.manifest)} bytes" in said
    await _nothing_committed(dst, liar, "liar")
    assert await dst.head_manifest("idx/app", "rel") is not None  # the honest copy stays


async def test_a_platform_copy_checks_the_other_entries_against_the_destination(
    registry: RegistryProcess, registry2: RegistryProcess, images: ImageBuilder,
    engine: CopyEngine, clients: Clients, fault_proxy: Callable[[str], FaultProxy],
) -> None:
    """Copying only linux/amd64 of an index whose arm64 entry lies about its media type:
    the arm64 child is not read from the source (it is not copied), so the destination's
    HEAD of it is the only check, and it refuses the whole index."""
    idx = await _mirrored_index(registry, registry2, images, engine, clients)
    arm = idx.children[1]
    assert arm.media_type == OCI_MANIFEST
    liar = await _lying_index(registry, clients, idx, 1, mediaType=DOCKER_MANIFEST)
    source = fault_proxy(registry.url)
    dst = clients(registry2)
    with pytest.raises(DescriptorMismatch) as info:
        await engine.copy(
            _req(clients(source.url), dst, "liar", "liar", platforms=["linux/amd64"])
        )
    said = str(info.value)
    assert said.startswith("idx/app at the destination: the index says " + arm.digest)
    assert DOCKER_MANIFEST in said and OCI_MANIFEST in said
    assert not source.requests("GET", rf"/manifests/{arm.digest}$")  # never read there
    await _nothing_committed(dst, liar, "liar")


async def test_a_destination_whose_head_disagrees_with_a_skipped_child_gets_no_index(
    registry: RegistryProcess, registry2: RegistryProcess, images: ImageBuilder,
    engine: CopyEngine, clients: Clients, fault_proxy: Callable[[str], FaultProxy],
) -> None:
    """Both children are at the destination, so the copy would skip them and push only the
    index; the destination's HEAD says one child is another kind of manifest than the index
    names: the index is not pushed on top of it."""
    idx = await _mirrored_index(registry, registry2, images, engine, clients)
    amd = idx.children[0]
    hostile = fault_proxy(registry2.url)
    hostile.add_headers(rf"/manifests/{amd.digest}$", {"Content-Type": DOCKER_MANIFEST},
                        method="HEAD")
    dst = clients(hostile.url)
    with pytest.raises(DescriptorMismatch) as info:
        await engine.copy(_req(clients(registry), dst, "rel", "again"))
    said = str(info.value)
    assert said.startswith("idx/app at the destination: the index says " + amd.digest)
    assert f"it is {DOCKER_MANIFEST} of {len(amd.manifest)} bytes" in said
    assert hostile.requests("HEAD", rf"/manifests/{amd.digest}$")
    assert not hostile.requests("PUT", r"/manifests/")  # nothing pushed at all
    assert await clients(registry2).head_manifest("idx/app", "again") is None
