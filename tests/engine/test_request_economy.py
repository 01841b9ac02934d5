"""What the engine asks a destination, counted through the fault proxy on real registries.

A new image needs no HEAD at all: the POST that opens each upload session would have mounted a
blob the repository already holds. A blob this engine placed in the repository minutes ago is
skipped without a request; if it is gone after all, the manifest push says so and the engine
places it again. A fresh engine that finds everything already there sends no blob's bytes.
"""

from __future__ import annotations

import json
import urllib.request
from dataclasses import dataclass
from typing import Any

import pytest

from registry_client import RegistryClient
from registry_testkit.faultproxy import FaultProxy
from registry_testkit.images import Descriptor, ImageRef
from registry_testkit.registry import RegistryProcess
from tests.support.images import ImageBuilder, inspect_raw, push
from transfer_service.engine import CopyEngine, CopyRequest

pytestmark = pytest.mark.registry

REPO = "team/app"


def _req(src: RegistryClient, dst: RegistryClient, tag: str) -> CopyRequest:
    return CopyRequest(src=src, src_repo=REPO, src_ref=tag, dst=dst, dst_repo=REPO, dst_tag=tag)


def _two_sharing_a_base(images: ImageBuilder, registry: RegistryProcess) -> list[ImageRef]:
    first = images.image("a", layers=[300_000, 1000], name="shared")
    base_digest = json.loads(first.manifest)["layers"][0]["digest"]
    base: Descriptor = next(b for b in first.blobs if b.digest == base_digest)
    second = images.image("b", layers=[base, 2000], name="shared")
    for img in (first, second):
        push(img, registry, REPO)
    return [first, second]


@dataclass
class Setup:
    a: ImageRef
    b: ImageRef
    base: str  # the layer they share
    proxy: FaultProxy  # in front of the destination
    src: RegistryClient
    dst: RegistryClient  # through the proxy


@pytest.fixture
def setup(
    registry: RegistryProcess,
    registry2: RegistryProcess,
    images: ImageBuilder,
    clients: Any,
    fault_proxy: Any,
) -> Setup:
    """Images a and b sharing a base layer at the source; the destination behind a proxy."""
    a, b = _two_sharing_a_base(images, registry)
    proxy: FaultProxy = fault_proxy(registry2.url)
    base = json.loads(a.manifest)["layers"][0]["digest"]
    return Setup(a, b, base, proxy, clients(registry), clients(proxy.url))


def _naming(log: list[tuple[str, str, str]], digest: str) -> list[tuple[str, str, str]]:
    return [r for r in log if digest in r[1] or digest in r[2]]


async def test_new_images_cost_no_head_and_a_shared_blob_is_not_asked_again(
    registry2: RegistryProcess, engine: CopyEngine, setup: Setup
) -> None:
    a, b, base, proxy, src, dst = setup.a, setup.b, setup.base, setup.proxy, setup.src, setup.dst
    await engine.copy(_req(src, dst, "a"))
    first = list(proxy.log)
    assert [r for r in first if r[0] == "HEAD"] == []
    posts = sorted(q for m, _, q in first if m == "POST")
    assert posts == sorted(f"mount={d.digest}&from={REPO}" for d in a.blobs)

    mark = len(proxy.log)
    r = await engine.copy(_req(src, dst, "b"))
    second = list(proxy.log)[mark:]
    assert _naming(second, base) == []  # placed there by the first copy: skipped unasked
    assert [x for x in second if x[0] == "HEAD"] == []
    assert r.progress.blobs_skipped == 1
    assert r.progress.blobs_done == len(b.blobs) - 1
    for img in (a, b):
        assert inspect_raw(registry2, REPO, img.tag) == img.manifest

    # An image whose blobs are all known there: its manifest is asked for first, and found.
    mark = len(proxy.log)
    again = await engine.copy(
        CopyRequest(src=src, src_repo=REPO, src_ref="a", dst=dst, dst_repo=REPO, dst_tag="a2")
    )
    assert [(m, p) for m, p, _ in list(proxy.log)[mark:]] == [
        ("HEAD", f"/v2/{REPO}/manifests/{a.digest}"),
        ("PUT", f"/v2/{REPO}/manifests/a2"),
    ]
    assert again.progress.blobs_skipped == len(a.blobs)


async def test_a_blob_gone_since_it_was_skipped_unasked_is_placed_again(
    registry2: RegistryProcess, engine: CopyEngine, setup: Setup
) -> None:
    b, base, proxy, src, dst = setup.b, setup.base, setup.proxy, setup.src, setup.dst
    await engine.copy(_req(src, dst, "a"))
    # Someone removes the shared layer from the repository behind the engine's back.
    gone = urllib.request.Request(f"{registry2.url}/v2/{REPO}/blobs/{base}", method="DELETE")
    with urllib.request.urlopen(gone) as resp:
        assert resp.status == 202
    assert not registry2.blob_exists(REPO, base)

    mark = len(proxy.log)
    r = await engine.copy(_req(src, dst, "b"))
    log = list(proxy.log)[mark:]
    manifest_puts = [x for x in log if x[0] == "PUT" and "/manifests/" in x[1]]
    assert len(manifest_puts) == 2  # refused for the missing layer, then accepted
    assert [x[0] for x in _naming(log, base)][:1] == ["HEAD"]  # checked this time
    assert registry2.blob_exists(REPO, base)
    assert inspect_raw(registry2, REPO, "b") == b.manifest
    assert r.progress.blobs_skipped + r.progress.blobs_done + r.progress.blobs_mounted == len(
        b.blobs
    )


async def test_a_fresh_engine_finds_blobs_already_held_and_sends_none(
    registry: RegistryProcess,
    registry2: RegistryProcess,
    images: ImageBuilder,
    tmp_path,
    clients,
    fault_proxy,
) -> None:
    a, _ = _two_sharing_a_base(images, registry)
    src = clients(registry)
    await CopyEngine(tmp_path / "one").copy(_req(src, clients(registry2), "a"))

    proxy: FaultProxy = fault_proxy(registry2.url)
    req = CopyRequest(
        src=src, src_repo=REPO, src_ref="a", dst=clients(proxy.url), dst_repo=REPO, dst_tag="a2"
    )
    r = await CopyEngine(tmp_path / "two").copy(req)
    assert r.progress.blobs_skipped == len(a.blobs)
    assert r.progress.blobs_done == 0
    assert [x for x in proxy.log if x[0] in ("PATCH", "PUT") and "/uploads/" in x[1]] == []
    # Each blob: the POST that found it held, then a HEAD that confirmed its size.
    for d in a.blobs:
        assert [x[0] for x in _naming(list(proxy.log), d.digest)] == ["POST", "HEAD"]
    assert inspect_raw(registry2, REPO, "a2") == a.manifest
