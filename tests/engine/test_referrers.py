"""Referrers copied after the image between real docker-registry 2.8.2 processes (issue 13).

The referrers are made by independent code (cosign-format signatures with `cryptography`,
DSSE attestations with `securesystemslib`, SBOM artifacts with the `oras` SDK), and what
arrives is checked with that code and plain HTTP, not with the project's client.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from securesystemslib.exceptions import VerificationError
from securesystemslib.signer import CryptoSigner

from registry_testkit.images import ImageRef, inspect_raw, push
from registry_testkit.registry import RegistryProcess
from tests.e2e.signing import ANNOTATION, new_key, public_pem, signature_image, verify
from tests.engine import referrer_artifacts as art
from tests.support.images import ImageBuilder
from transfer_service.engine import CopiedReferrer, CopyEngine, CopyRequest, InvalidReference

pytestmark = pytest.mark.registry


def _req(clients, src: RegistryProcess, dst: RegistryProcess, *kinds: str, **kw) -> CopyRequest:
    kw.setdefault("dst_repo", "qa/app")
    kw.setdefault("dst_tag", "1.0")
    return CopyRequest(
        src=clients(src), src_repo="dev/app", src_ref="1.0", dst=clients(dst),
        copy_referrers=kinds, **kw,
    )


def _image(images: ImageBuilder, registry: RegistryProcess) -> ImageRef:
    img = images.image("1.0", layers=[3000])
    push(img, registry, "dev/app")
    return img


def _signed(tmp_path: Path, registry: RegistryProcess, img: ImageRef, key) -> ImageRef:
    sig = signature_image(tmp_path, "dev/app", img.digest, key)
    push(sig, registry, "dev/app")
    return sig


async def test_signature_copied_byte_for_byte_verifies_at_the_destination(
    registry: RegistryProcess, registry2: RegistryProcess, images: ImageBuilder,
    engine: CopyEngine, clients, tmp_path: Path,
) -> None:
    img = _image(images, registry)
    key = new_key("ecdsa")
    sig = _signed(tmp_path, registry, img, key)
    r = await engine.copy(_req(clients, registry, registry2, "signatures"))
    assert r.digest == img.digest
    assert r.referrers == [CopiedReferrer(sig.digest, "signature", sig.tag)]
    assert r.referrer_problems == []
    assert art.tags(registry2, "qa/app") == sorted(["1.0", sig.tag])
    doc, raw = art.manifest(registry2, "qa/app", sig.tag)
    assert raw == sig.manifest  # same bytes, same digest
    layer = doc["layers"][0]
    payload = art.blob(registry2, "qa/app", layer["digest"])
    assert verify(public_pem(key), payload, layer["annotations"][ANNOTATION])
    assert not verify(public_pem(new_key("ecdsa")), payload, layer["annotations"][ANNOTATION])
    assert json.loads(payload)["critical"]["image"]["docker-manifest-digest"] == img.digest
    # Another repository: the message says what the signature still proves.
    assert img.digest in r.referrer_note and "dev/app" in r.referrer_note


async def test_default_copies_no_referrer_and_a_kind_copies_only_itself(
    registry: RegistryProcess, registry2: RegistryProcess, images: ImageBuilder,
    engine: CopyEngine, clients, tmp_path: Path,
) -> None:
    img = _image(images, registry)
    _signed(tmp_path, registry, img, new_key("ed25519"))
    push(art.attestation_image(tmp_path, "dev/app", img.digest, CryptoSigner.generate_ecdsa()),
         registry, "dev/app")
    r = await engine.copy(_req(clients, registry, registry2))
    assert r.referrers == [] and r.referrer_note == ""
    assert art.tags(registry2, "qa/app") == ["1.0"]
    r = await engine.copy(_req(clients, registry, registry2, "sboms", dst_repo="qa/sbom"))
    assert r.referrers == [] and r.referrer_problems == []
    assert art.tags(registry2, "qa/sbom") == ["1.0"]
    with pytest.raises(InvalidReference, match="provenance"):
        await engine.copy(_req(clients, registry, registry2, "provenance"))


async def test_dsse_attestation_copied_and_verified_with_securesystemslib(
    registry: RegistryProcess, registry2: RegistryProcess, images: ImageBuilder,
    engine: CopyEngine, clients, tmp_path: Path,
) -> None:
    img = _image(images, registry)
    signer = CryptoSigner.generate_ecdsa()
    att = art.attestation_image(tmp_path, "dev/app", img.digest, signer)
    push(att, registry, "dev/app")
    _signed(tmp_path, registry, img, new_key())
    r = await engine.copy(_req(clients, registry, registry2, "attestations", dst_repo="dev/app"))
    assert r.referrers == [CopiedReferrer(att.digest, "attestation", att.tag)]
    assert art.tags(registry2, "dev/app") == sorted(["1.0", att.tag])  # not the signature
    doc, raw = art.manifest(registry2, "dev/app", att.tag)
    assert raw == att.manifest
    envelope = art.blob(registry2, "dev/app", doc["layers"][0]["digest"])
    stmt = art.verify_attestation(envelope, signer)
    assert stmt["subject"][0]["digest"]["sha256"] == img.digest.split(":", 1)[1]
    with pytest.raises(VerificationError, match="threshold"):
        art.verify_attestation(envelope, CryptoSigner.generate_ecdsa())
    assert r.referrer_note == ""  # same repository and tag: nothing to explain


async def test_sbom_artifact_arrives_by_digest_and_is_listed_by_the_tag_index(
    registry: RegistryProcess, registry2: RegistryProcess, images: ImageBuilder,
    engine: CopyEngine, clients, tmp_path: Path,
) -> None:
    img = _image(images, registry)
    sbom = art.push_sbom(registry, "dev/app", img.digest, len(img.manifest), tmp_path / "sbom")
    # What the destination already lists for the image is kept (pushed there by someone else).
    push(img, registry2, "qa/app")
    theirs = art.push_sbom(registry2, "qa/app", img.digest, len(img.manifest),
                           tmp_path / "theirs", name="theirs")
    src = clients(registry)
    assert [x.digest for x in await src.list_referrers("dev/app", img.digest)] == [sbom.digest]
    assert await src.list_referrers("dev/app", img.digest, art.IN_TOTO) == []

    r = await engine.copy(_req(clients, registry, registry2, "sboms"))
    assert r.referrers == [CopiedReferrer(sbom.digest, "sbom", "")]
    assert r.referrer_problems == []
    status, raw, _ = art.get(registry2, f"/v2/qa/app/manifests/{sbom.digest}", art.OCI_MANIFEST)
    assert status == 200 and art.manifest(registry, "dev/app", sbom.digest)[1] == raw
    assert json.loads(raw)["subject"]["digest"] == img.digest
    assert art.pull_sbom(registry2, "qa/app", sbom.digest, tmp_path / "pulled") == sbom.document
    index, _ = art.manifest(registry2, "qa/app", img.digest.replace(":", "-"))
    listed = {m["digest"]: m for m in index["manifests"]}
    assert set(listed) == {theirs.digest, sbom.digest}
    assert listed[sbom.digest]["artifactType"] == art.SPDX
    assert listed[sbom.digest]["size"] == len(raw)
    assert sbom.tag not in art.tags(registry2, "qa/app")  # by digest, not under its tag
    # Again: nothing new to list, the index is not rewritten.
    before = art.manifest(registry2, "qa/app", img.digest.replace(":", "-"))[1]
    r = await engine.copy(_req(clients, registry, registry2, "all"))
    assert [c.digest for c in r.referrers] == [sbom.digest]
    assert art.manifest(registry2, "qa/app", img.digest.replace(":", "-"))[1] == before


async def test_all_copies_every_kind_and_a_destination_signature_is_never_dropped(
    registry: RegistryProcess, registry2: RegistryProcess, images: ImageBuilder,
    engine: CopyEngine, clients, tmp_path: Path,
) -> None:
    img = _image(images, registry)
    sig = _signed(tmp_path, registry, img, new_key())
    att = art.attestation_image(tmp_path, "dev/app", img.digest, CryptoSigner.generate_ecdsa())
    push(att, registry, "dev/app")
    sbom = art.push_sbom(registry, "dev/app", img.digest, len(img.manifest), tmp_path / "sbom")
    # The destination signed the image itself: its .sig holds a signature the source's lacks.
    push(img, registry2, "qa/app")
    local = signature_image(tmp_path / "qa", "qa/app", img.digest, new_key())
    push(local, registry2, "qa/app")

    r = await engine.copy(_req(clients, registry, registry2, "all", dst_tag="2.0"))
    assert sorted((c.kind, c.digest) for c in r.referrers) == sorted(
        [("attestation", att.digest), ("sbom", sbom.digest)]
    )
    assert len(r.referrer_problems) == 1 and sig.tag in r.referrer_problems[0]
    assert "left as it is" in r.referrer_problems[0]
    assert art.manifest(registry2, "qa/app", sig.tag)[1] == local.manifest
    assert art.manifest(registry2, "qa/app", "2.0")[1] == img.manifest  # the image is copied
    assert "qa/app:2.0" in r.referrer_note


async def test_the_default_asks_nothing_more_and_all_asks_five_requests_when_there_are_none(
    registry: RegistryProcess, registry2: RegistryProcess, images: ImageBuilder,
    engine: CopyEngine, clients, fault_proxy,
) -> None:
    _image(images, registry)
    src_proxy, dst_proxy = fault_proxy(registry.url), fault_proxy(registry2.url)

    def about_referrers(proxy) -> list[tuple[str, str, str]]:
        return [r for r in proxy.log if "sha256-" in r[1] or "/referrers/" in r[1]]

    async def copy(*kinds: str, repo: str) -> tuple[int, int]:
        src_proxy.log.clear()
        dst_proxy.log.clear()
        await engine.copy(CopyRequest(
            src=clients(src_proxy.url), src_repo="dev/app", src_ref="1.0",
            dst=clients(dst_proxy.url), dst_repo=repo, dst_tag="1.0", copy_referrers=kinds,
        ))
        return len(about_referrers(src_proxy)), len(about_referrers(dst_proxy))

    assert await copy(repo="qa/plain") == (0, 0)
    # .sig, .att, .sbom tags, the referrers API (404 on 2.8.2) and its sha256-<hex> tag, all
    # at the source; the destination is asked nothing (no referrer to push, no index to merge).
    assert await copy("all", repo="qa/all") == (5, 0)
    assert {r[0] for r in about_referrers(src_proxy)} == {"GET"}


async def test_signature_over_tls_with_htpasswd_to_token_auth(
    tls_registry: RegistryProcess, token_registry: RegistryProcess, images: ImageBuilder,
    engine: CopyEngine, clients, tmp_path: Path,
) -> None:
    img = images.image("1.0", layers=[3000])
    push(img, tls_registry, "dev/app", user="alice")
    sig = signature_image(tmp_path, "dev/app", img.digest, new_key())
    push(sig, tls_registry, "dev/app", user="alice")
    r = await engine.copy(CopyRequest(
        src=clients(tls_registry, "alice"), src_repo="dev/app", src_ref="1.0",
        dst=clients(token_registry, "writer"), dst_repo="qa/app", dst_tag="1.0",
        copy_referrers=("all",),
    ))
    assert r.referrers == [CopiedReferrer(sig.digest, "signature", sig.tag)]
    assert r.referrer_problems == []
    assert inspect_raw(token_registry, "qa/app", sig.tag, user="reader") == sig.manifest
    # The referrers API asked with a pull token: 2.8.2's plain 404 after the token, no index.
    reader = clients(token_registry, "reader")
    assert not await reader.has_referrers_api("qa/app", img.digest)
    assert await reader.list_referrers("qa/app", img.digest) == []


async def test_an_index_copied_whole_carries_its_childrens_signatures_one_platform_only_its_own(
    registry: RegistryProcess, registry2: RegistryProcess, images: ImageBuilder,
    engine: CopyEngine, clients, tmp_path: Path,
) -> None:
    idx = images.index("1.0", platforms=("linux/amd64", "linux/arm64"))
    push(idx, registry, "dev/app")
    key = new_key()
    top = _signed(tmp_path / "top", registry, idx, key)
    arm = _signed(tmp_path / "arm", registry, idx.children[1], key)
    r = await engine.copy(_req(clients, registry, registry2, "signatures"))
    assert r.pushed_index
    assert sorted(c.digest for c in r.referrers) == sorted([top.digest, arm.digest])
    assert art.tags(registry2, "qa/app") == sorted(["1.0", top.tag, arm.tag])
    assert art.manifest(registry2, "qa/app", arm.tag)[1] == arm.manifest

    one = _req(clients, registry, registry2, "signatures", dst_repo="qa/arm")
    one.platforms = ["linux/arm64"]
    r = await engine.copy(one)
    assert r.digest == idx.children[1].digest and not r.pushed_index
    assert r.referrers == [CopiedReferrer(arm.digest, "signature", arm.tag)]
    assert art.tags(registry2, "qa/arm") == sorted(["1.0", arm.tag])
