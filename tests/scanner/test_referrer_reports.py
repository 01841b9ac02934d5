"""SBOMs and attestations attached as OCI referrers (a manifest whose `subject` is the image)
are read into the image's facts, as cosign's `.sbom` / `.att` tags are (scanner/scan.py
`attached_reports`): through the referrers API where the registry has one, else through the
`sha256-<hex>` index tag (docker-registry 2.8.2), also when the scanner reads the registry
through the transfer service. Referrers are pushed with the `oras` Python SDK
(tests/engine/referrer_artifacts.py), attestations signed with `securesystemslib`."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import oras.oci
import pytest
from cryptography.fernet import Fernet
from grpc import aio
from mirror.v1 import transfer_pb2, transfer_pb2_grpc
from securesystemslib.dsse import Envelope
from securesystemslib.signer import CryptoSigner

from registry_client import RegistryClient, RegistryConfig
from registry_testkit.faultproxy import FaultProxy
from registry_testkit.images import ImageRef, push
from registry_testkit.registry import RegistryProcess
from scanner import scan
from scanner.layers import Limits
from scanner.reports import parse_attestation
from scanner.scan import attached_reports, scan_image
from servicekit.auth import outbound_interceptors, parse_tokens
from servicekit.security import ServerSecurity
from servicekit.server import RunningServer, start_server
from tests.engine import referrer_artifacts as art
from tests.registry.referrers_shim import ReferrersShim
from tests.scanner import ocikit
from tests.scanner.layerkit import ALPINE_OS_RELEASE, layer, package_json
from tests.transfer.transfer_support import endpoint_msg
from transfer_service.endpoints import EndpointStore
from transfer_service.jobs import Journal
from transfer_service.remote import RemoteEndpoints
from transfer_service.schema import open_database
from transfer_service.secrets import SecretBox
from transfer_service.servicer import TransferServicer
from transfer_service.worker import Worker

pytestmark = pytest.mark.registry

ADMIN = "admin-token-for-the-referrers-test-0123"
CYCLONEDX_BOM = "https://cyclonedx.org/bom"


def app_image(tmp_path: Path, tag: str = "1.0") -> ImageRef:
    """Alpine's os-release and lodash: no busybox (the oras SBOM names busybox 1.36.1)."""
    return ocikit.image(tmp_path / f"img-{tag}", tag, [layer({
        "etc/os-release": ALPINE_OS_RELEASE,
        "app/node_modules/lodash/package.json": package_json("lodash", "4.17.21"),
    })], labels={"version": tag})  # each tag its own digest


def client(url: str) -> RegistryClient:
    return RegistryClient(RegistryConfig(url=url, backoff_base=0.01))


def names(facts: Any) -> set[str]:
    return {c.name for c in facts.components}


def push_attestation(
    reg: Any, repo: str, image: ImageRef, workdir: Path, *, component: str = "requests",
    pad: int = 0, tag_index: bool = True,
) -> str:
    """An in-toto statement (CycloneDX predicate naming `component`) in a DSSE envelope
    signed with securesystemslib, pushed with the oras SDK as an artifact whose subject is
    the image (cosign's OCI 1.1 mode stores attestations so); its digest. `pad` bytes of
    padding make the envelope that much larger."""
    bom = {"bomFormat": "CycloneDX", "specVersion": "1.5", "components": [
        {"type": "library", "name": component, "version": "2.31.0",
         "purl": f"pkg:pypi/{component}@2.31.0"}], "metadata": {"padding": "x" * pad}}
    statement = {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": repo, "digest": {"sha256": image.digest.split(":", 1)[1]}}],
        "predicateType": CYCLONEDX_BOM,
        "predicate": bom,
    }
    env = Envelope(payload=json.dumps(statement).encode(), payload_type=art.IN_TOTO,
                   signatures={})
    env.sign(CryptoSigner.generate_ecdsa())
    workdir.mkdir(parents=True, exist_ok=True)
    envelope = workdir / "attestation.dsse.json"
    envelope.write_text(json.dumps(env.to_dict()))
    config = workdir / "config.json"
    config.write_bytes(b"{}")
    client = art._oras(reg)
    resp = client.push(
        target=f"{reg.host}/{repo}:att-{component}",
        files=[f"{envelope}:{art.DSSE}"],
        manifest_config=f"{config}:{art.IN_TOTO}",  # the SDK's artifact type: the config's
        subject=oras.oci.Subject(art.OCI_MANIFEST, image.digest, len(image.manifest)),
        disable_path_validation=True,
        quiet=True,
    )
    digest = str(resp.headers["Docker-Content-Digest"])
    if tag_index:
        size = len(art.manifest(reg, repo, digest)[1])
        art._add_to_tag_index(reg, client, repo, image.digest, {
            "mediaType": art.OCI_MANIFEST, "digest": digest, "size": size,
            "artifactType": art.IN_TOTO,
        })
    return digest


async def test_an_oras_sbom_with_a_subject_is_read_into_the_images_components(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    img = app_image(tmp_path)
    push(img, registry, "dev/app")
    async with client(registry.url) as rc:
        before = await scan_image(rc, "dev/app", img.digest)
        assert "busybox" not in names(before) and "lodash" in names(before)
        # oras pushes the SBOM with its subject; 2.8.2 has no referrers API, so the
        # sha256-<hex> index lists it.
        sbom = art.push_sbom(registry, "dev/app", img.digest, len(img.manifest), tmp_path / "s")
        after = await scan_image(rc, "dev/app", img.digest)
    assert {(c.name, c.version) for c in after.components} >= {
        ("busybox", "1.36.1"), ("lodash", "4.17.21")}
    assert f"referrer:{sbom.digest}" in after.sources
    assert after.digest == img.digest


async def test_a_dsse_attestation_referrer_is_read_through_the_referrers_api(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    img = app_image(tmp_path)
    push(img, registry, "dev/app")
    with ReferrersShim(registry.url) as api:
        # Pushed through the registry with the API: no index tag is kept, the API lists it.
        att = push_attestation(api, "dev/app", img, tmp_path / "a", tag_index=False)
        api.log.clear()
        async with client(api.url) as rc:
            facts = await scan_image(rc, "dev/app", img.digest)
        assert "requests" in names(facts) and f"referrer:{att}" in facts.sources
        assert len(api.requests("GET", r"/referrers/")) == 1
        index_tag = img.digest.replace(":", "-")
        assert not api.requests("GET", rf"/manifests/{index_tag}$")  # the API sufficed


async def test_an_image_without_referrers_costs_four_requests(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    img = app_image(tmp_path)
    push(img, registry, "dev/app")
    with FaultProxy(registry.url) as proxy:
        async with client(proxy.url) as rc:
            await rc.get_manifest("dev/app", img.digest)  # warm: the client's own first asks
            proxy.log.clear()
            assert await attached_reports(rc, "dev/app", img.digest, Limits()) == []
        hexpart = img.digest.split(":", 1)[1]
        # cosign's two tags, the referrers API, the index tag: each one 404 from 2.8.2.
        assert sorted(p for _, p, _ in proxy.log) == sorted([
            f"/v2/dev/app/manifests/sha256-{hexpart}.sbom",
            f"/v2/dev/app/manifests/sha256-{hexpart}.att",
            f"/v2/dev/app/referrers/{img.digest}",
            f"/v2/dev/app/manifests/sha256-{hexpart}",
        ])


async def test_at_most_eight_referrers_are_read_and_unreadable_ones_are_skipped(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    img = app_image(tmp_path)
    push(img, registry, "dev/app")
    other = app_image(tmp_path, "2.0")
    push(other, registry, "dev/app")
    limit = 4096
    # Listed in the image's index but not pointing at it, an envelope over the blob limit,
    # a layer that is no DSSE envelope: each skipped, the image still scans.
    big = push_attestation(registry, "dev/app", img, tmp_path / "big", component="huge",
                           pad=2 * limit)
    bad = art.push_sbom(registry, "dev/app", img.digest, len(img.manifest), tmp_path / "bad",
                        name="bad", media_type=art.IN_TOTO)
    good = push_attestation(registry, "dev/app", img, tmp_path / "good")
    stray = art.push_sbom(registry, "dev/app", other.digest, len(other.manifest),
                          tmp_path / "stray", name="stray", tag_index=False)
    art._add_to_tag_index(registry, art._oras(registry), "dev/app", img.digest, {
        "mediaType": art.OCI_MANIFEST, "digest": stray.digest,
        "size": len(art.manifest(registry, "dev/app", stray.digest)[1]),
        "artifactType": art.SPDX})
    sboms = [art.push_sbom(registry, "dev/app", img.digest, len(img.manifest),
                           tmp_path / f"s{i}", name=f"sbom{i}") for i in range(8)]
    with FaultProxy(registry.url) as proxy:
        async with client(proxy.url) as rc:
            facts = await scan_image(rc, "dev/app", img.digest,
                                     limits=Limits(max_blob_bytes=limit))
    read = {s.removeprefix("referrer:") for s in facts.sources if s.startswith("referrer:")}
    # The first eight listed were looked at: three skipped, five read; the rest not asked.
    assert read == {good, *(s.digest for s in sboms[:4])}
    assert {"requests", "busybox", "lodash"} <= names(facts) and "huge" not in names(facts)
    by_digest = {p.rsplit("/", 1)[1] for _, p, _ in proxy.requests("GET", r"/manifests/sha256:")}
    assert by_digest == {img.digest, stray.digest, big, bad.digest, good,
                         *(s.digest for s in sboms[:4])}
    big_layer = art.manifest(registry, "dev/app", big)[0]["layers"][0]["digest"]
    assert not proxy.requests("GET", rf"/blobs/{big_layer}")  # over the limit: not fetched
    assert scan.MAX_REFERRERS == 8


@pytest.fixture
async def transfer(tmp_path: Path) -> AsyncIterator[RunningServer]:
    """A transfer service (in-process, admin token) serving the registry read RPCs."""
    db = open_database(tmp_path / "transfer")
    store = EndpointStore(db, SecretBox([Fernet.generate_key()]))
    journal = Journal(db)
    tokens = tmp_path / "tokens"
    tokens.write_text(f"admin:{ADMIN}\n")
    sec = ServerSecurity.build(tokens_file=str(tokens), environ={})
    running = await start_server(
        [TransferServicer(store, journal, Worker(journal, store, engine=None))],
        "127.0.0.1:0", interceptors=sec.interceptors,
    )
    yield running
    await running.stop(0)
    db.close()


async def test_through_the_transfer_service_the_index_tag_is_read(
    transfer: RunningServer, registry: RegistryProcess, tmp_path: Path
) -> None:
    img = app_image(tmp_path)
    push(img, registry, "dev/app")
    bare = app_image(tmp_path, "2.0")
    push(bare, registry, "dev/app")
    sbom = art.push_sbom(registry, "dev/app", img.digest, len(img.manifest), tmp_path / "s")
    att = push_attestation(registry, "dev/app", img, tmp_path / "a")
    with FaultProxy(registry.url) as proxy:
        channel = aio.insecure_channel(
            f"127.0.0.1:{transfer.port}",
            interceptors=outbound_interceptors(parse_tokens(f"admin:{ADMIN}")),
        )
        try:
            await transfer_pb2_grpc.TransferServiceStub(channel).CreateEndpoint(
                transfer_pb2.CreateEndpointRequest(endpoint=endpoint_msg("dev", proxy.url)))
            async with RemoteEndpoints(channel).client_for("dev") as rc:
                assert hasattr(rc, "list_referrers")  # ReadReferrers: API, else index tag
                facts = await scan_image(rc, "dev/app", img.digest)
                await rc.get_manifest("dev/app", bare.digest)
                proxy.log.clear()
                assert await attached_reports(rc, "dev/app", bare.digest, Limits()) == []
        finally:
            await channel.close()
    assert {"busybox", "requests", "lodash"} <= names(facts)
    assert {f"referrer:{sbom.digest}", f"referrer:{att}"} <= set(facts.sources)
    # Without referrers: the two cosign tags, the referrers API, the index tag, one 404 each
    # (as in-process).
    assert len(proxy.log) == 4 and len(proxy.requests("GET", r"/referrers/")) == 1


def test_an_attestation_in_a_sigstore_bundle_is_read() -> None:
    """cosign's OCI 1.1 attestations are sigstore bundles holding the DSSE envelope."""
    statement = {"_type": "https://in-toto.io/Statement/v1", "subject": [],
                 "predicateType": CYCLONEDX_BOM,
                 "predicate": {"bomFormat": "CycloneDX", "specVersion": "1.5", "components": [
                     {"type": "library", "name": "requests", "version": "2.31.0",
                      "purl": "pkg:pypi/requests@2.31.0"}]}}
    bundle = {
        "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
        "verificationMaterial": {},
        "dsseEnvelope": {"payload": base64.b64encode(json.dumps(statement).encode()).decode(),
                         "payloadType": art.IN_TOTO,
                         "signatures": [{"sig": "MEUCIQ==", "keyid": ""}]},
    }
    facts = parse_attestation(json.dumps(bundle).encode())
    assert facts is not None and [c.name for c in facts.components] == ["requests"]
