"""Registry reads through the transfer service (HeadManifest, ReadManifest, ReadBlob, ReadTags,
ReadReferrers) with transfer_service.remote: the same answers and error types as the
in-process client, and an admin token only (a read token must not read private images through
the mirror)."""

from __future__ import annotations

import hashlib
import json
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.fernet import Fernet
from grpc import aio
from mirror.v1 import transfer_pb2, transfer_pb2_grpc

from registry_client import errors as rc_errors
from registry_client.client import MAX_MANIFEST_BYTES
from registry_testkit.images import ImageBuilder, push
from registry_testkit.ports import free_port
from registry_testkit.registry import RegistryProcess
from scanner.layers import Limits
from scanner.scan import attached_reports
from servicekit.auth import Role, outbound_interceptors, parse_tokens, required_role
from servicekit.errors import ApiError
from servicekit.security import ServerSecurity
from servicekit.server import RunningServer, start_server
from tests.engine import referrer_artifacts as art
from tests.registry.referrers_shim import ReferrersShim
from tests.transfer.transfer_support import endpoint_msg
from transfer_service import referrer_reads, registry_reads
from transfer_service.endpoints import EndpointStore
from transfer_service.jobs import Journal
from transfer_service.remote import CHANNEL_OPTIONS, RemoteEndpoints
from transfer_service.schema import open_database
from transfer_service.secrets import SecretBox
from transfer_service.servicer import TransferServicer
from transfer_service.worker import Worker

pytestmark = pytest.mark.registry

ADMIN = "admin-token-0123456789abcdef"
READ = "read-token-0123456789abcdef"
COSIGN_SIG = "application/vnd.dev.cosign.artifact.sig.v1+json"


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[RunningServer, EndpointStore]]:
    db = open_database(tmp_path / "data")
    store = EndpointStore(db, SecretBox([Fernet.generate_key()]))
    journal = Journal(db)
    servicer = TransferServicer(store, journal, Worker(journal, store, engine=None))
    tokens = tmp_path / "tokens"
    tokens.write_text(f"admin:{ADMIN}\nread:{READ}\n")
    sec = ServerSecurity.build(tokens_file=str(tokens), environ={})
    running = await start_server([servicer], "127.0.0.1:0", interceptors=sec.interceptors)
    yield running, store
    await running.stop(0)
    db.close()


def _channel(running: RunningServer, token: str) -> aio.Channel:
    return aio.insecure_channel(
        f"127.0.0.1:{running.port}",
        interceptors=outbound_interceptors(parse_tokens(f"admin:{token}")),
    )


async def test_remote_client_reads_like_the_registry_client(
    server: tuple[RunningServer, EndpointStore], registry: RegistryProcess, images: ImageBuilder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    running, store = server
    # Small chunks on the wire: a blob of several ReadBlob messages, reassembled exactly.
    monkeypatch.setattr(registry_reads, "CHUNK_BYTES", 1000)
    monkeypatch.setattr(registry_reads, "TAGS_PER_PAGE", 1)
    img = images.image("1.0", layers=[5000])
    push(img, registry, "dev/app")
    push(images.image("2.0"), registry, "dev/app")
    channel = _channel(running, ADMIN)
    try:
        await transfer_pb2_grpc.TransferServiceStub(channel).CreateEndpoint(
            transfer_pb2.CreateEndpointRequest(endpoint=endpoint_msg("dev", registry.url))
        )
        remote = RemoteEndpoints(channel)
        async with remote.client_for("dev") as rc, store.client_for("dev") as local:
            assert await rc.head_manifest("dev/app", "1.0") == await local.head_manifest(
                "dev/app", "1.0")
            assert await rc.head_manifest("dev/app", "9.9") is None
            m = await rc.get_manifest("dev/app", "1.0")
            assert (m.digest, m.data) == (img.digest, img.manifest)
            assert m.media_type == (await local.get_manifest("dev/app", "1.0")).media_type
            with pytest.raises(rc_errors.NotFound):
                await rc.get_manifest("dev/app", "9.9")
            assert sorted(await rc.list_tags("dev/app")) == ["1.0", "2.0"]
            with pytest.raises(rc_errors.NotFound):
                await rc.list_tags("dev/none")
            assert await rc.list_repositories() == ["dev/app"]

            layer = max(img.blobs, key=lambda d: d.size)
            got = bytearray()
            async with rc.open_blob("dev/app", layer.digest) as body:
                assert (body.size, body.offset) == (layer.size, 0)
                async for chunk in body.iter_chunks(700):
                    assert 0 < len(chunk) <= 700
                    got += chunk
            assert "sha256:" + hashlib.sha256(got).hexdigest() == layer.digest
            async with rc.open_blob("dev/app", layer.digest, offset=4000) as body:
                tail = b"".join([c async for c in body.iter_chunks()])
            assert tail == bytes(got[4000:])
            with pytest.raises(rc_errors.NotFound):
                async with rc.open_blob("dev/app", "sha256:" + "0" * 64) as body:
                    pass
        # An unknown endpoint: the ApiError EndpointStore.client_for raises in-process.
        async with remote.client_for("nope") as rc:
            with pytest.raises(ApiError) as exc:
                await rc.head_manifest("dev/app", "1.0")
            assert exc.value.code == grpc.StatusCode.NOT_FOUND
    finally:
        await channel.close()


async def test_read_token_cannot_read_through_the_transfer_service(
    server: tuple[RunningServer, EndpointStore], registry: RegistryProcess, images: ImageBuilder,
) -> None:
    running, _ = server
    img = images.image("1.0")
    push(img, registry, "dev/app")
    admin = _channel(running, ADMIN)
    reader = _channel(running, READ)
    try:
        await transfer_pb2_grpc.TransferServiceStub(admin).CreateEndpoint(
            transfer_pb2.CreateEndpointRequest(endpoint=endpoint_msg("dev", registry.url))
        )
        stub = transfer_pb2_grpc.TransferServiceStub(reader)
        req = transfer_pb2.ReadManifestRequest(endpoint="dev", repository="dev/app",
                                               reference="1.0")
        calls = [
            stub.HeadManifest(req),
            stub.ReadManifest(req),
            stub.ReadReferrers(transfer_pb2.ReadReferrersRequest(
                endpoint="dev", repository="dev/app", digest=img.digest)),
        ]
        for call in calls:
            with pytest.raises(aio.AioRpcError) as err:
                await call
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        for stream in (
            stub.ReadBlob(transfer_pb2.ReadBlobRequest(endpoint="dev", repository="dev/app",
                                                       digest=img.blobs[0].digest)),
            stub.ReadTags(transfer_pb2.ReadTagsRequest(endpoint="dev", repository="dev/app")),
        ):
            with pytest.raises(aio.AioRpcError) as err:
                [x async for x in stream]
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # The same token still reads what a read token may (the endpoint, without its secret).
        await stub.GetEndpoint(transfer_pb2.GetEndpointRequest(name="dev"))
    finally:
        await admin.close()
        await reader.close()


async def test_an_unreachable_registry_is_a_retryable_connect_error(
    server: tuple[RunningServer, EndpointStore],
) -> None:
    running, store = server
    channel = _channel(running, ADMIN)
    try:
        await transfer_pb2_grpc.TransferServiceStub(channel).CreateEndpoint(
            transfer_pb2.CreateEndpointRequest(
                endpoint=endpoint_msg("gone", f"http://127.0.0.1:{free_port()}")))
        async with store.client_for("gone") as local:
            with pytest.raises(rc_errors.RegistryError) as in_process:
                await local.head_manifest("dev/app", "1.0")
        async with RemoteEndpoints(channel).client_for("gone") as rc:
            with pytest.raises(rc_errors.RegistryError) as remote:
                await rc.head_manifest("dev/app", "1.0")
        assert type(remote.value) is type(in_process.value)
        assert isinstance(remote.value, rc_errors.ConnectError) and remote.value.retryable
        assert remote.value.registry == in_process.value.registry
        # Listing referrers fails the same way (a gateway retries it, never skips it).
        digest = "sha256:" + "a" * 64
        async with store.client_for("gone") as local:
            with pytest.raises(rc_errors.RegistryError) as in_process:
                await local.list_referrers("dev/app", digest)
        async with RemoteEndpoints(channel).client_for("gone") as rc:
            with pytest.raises(rc_errors.RegistryError) as remote:
                await rc.list_referrers("dev/app", digest)
        assert type(remote.value) is type(in_process.value) is rc_errors.ConnectError
        assert remote.value.retryable
    finally:
        await channel.close()


def test_entrypoints_read_through_the_transfer_address_and_refuse_the_old_flags(
    tmp_path: Path,
) -> None:
    from gateway.__main__ import parse_args as gateway_args
    from scanner.__main__ import parse_args as scanner_args

    base = ["--policy-address", "p:1", "--transfer-address", "transfer:50052"]
    assert gateway_args(base).transfer_address == "transfer:50052"
    for old in (["--transfer-data", str(tmp_path)], ["--secret-key-file", str(tmp_path)]):
        with pytest.raises(SystemExit):
            gateway_args([*base, *old])
    args = scanner_args(["--transfer-address", "transfer:50052"])
    assert args.transfer_address == "transfer:50052"
    assert not getattr(args, "transfer_data", "")  # the flag is gone (or at least unset)
    with pytest.raises(SystemExit):
        scanner_args(["--transfer-address", "t:1", "--transfer-data", str(tmp_path)])


async def test_the_largest_manifest_fits_through_the_channel_options(
    server: tuple[RunningServer, EndpointStore], registry: RegistryProcess, images: ImageBuilder,
) -> None:
    running, store = server
    img = images.image("1.0")
    push(img, registry, "dev/app")
    doc = json.loads(img.manifest)
    doc["annotations"] = {"pad": ""}
    base = len(json.dumps(doc).encode())
    doc["annotations"]["pad"] = "x" * (MAX_MANIFEST_BYTES - base - 16)
    big = json.dumps(doc).encode()
    assert MAX_MANIFEST_BYTES - 64 < len(big) <= MAX_MANIFEST_BYTES
    admin = outbound_interceptors(parse_tokens(f"admin:{ADMIN}"))
    default = aio.insecure_channel(f"127.0.0.1:{running.port}", interceptors=admin)
    dialled = aio.insecure_channel(f"127.0.0.1:{running.port}", interceptors=admin,
                                   options=list(CHANNEL_OPTIONS))
    try:
        await transfer_pb2_grpc.TransferServiceStub(default).CreateEndpoint(
            transfer_pb2.CreateEndpointRequest(endpoint=endpoint_msg("dev", registry.url))
        )
        async with store.client_for("dev") as local:
            digest = await local.put_manifest("dev/app", "big", big, doc["mediaType"])
        # gRPC's default 4 MiB limit refuses it...
        async with RemoteEndpoints(default).client_for("dev") as rc:
            with pytest.raises(ApiError) as exc:
                await rc.get_manifest("dev/app", "big")
            assert exc.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        # ...the options the gateway and the scanner dial with take it.
        async with RemoteEndpoints(dialled).client_for("dev") as rc:
            m = await rc.get_manifest("dev/app", "big")
        assert (m.digest, m.data) == (digest, big)
    finally:
        await default.close()
        await dialled.close()


def test_the_read_rpcs_need_the_admin_role() -> None:
    for method in ("HeadManifest", "ReadManifest", "ReadBlob", "ReadTags", "ReadReferrers"):
        assert required_role(f"/mirror.v1.TransferService/{method}") == Role.ADMIN, method


# -- ReadReferrers ---------------------------------------------------------------------------


@pytest.fixture
def shim(registry: RegistryProcess) -> Iterator[ReferrersShim]:
    """The OCI referrers API (one descriptor a page) in front of the same 2.8.2."""
    with ReferrersShim(registry.url) as s:
        yield s


ANNOTATIONS = {"org.opencontainers.image.created": "2024-05-01T00:00:00Z", "team": "ci"}


def _annotated_copy(reg: Any, repo: str, digest: str) -> tuple[str, int]:
    """PUT (plain HTTP, not the project's client) a copy of referrer `digest` that carries
    ANNOTATIONS: same blobs and subject, its own digest. Its digest and size."""
    doc, _ = art.manifest(reg, repo, digest)
    doc["annotations"] = ANNOTATIONS
    raw = json.dumps(doc).encode()
    new = "sha256:" + hashlib.sha256(raw).hexdigest()
    req = urllib.request.Request(f"{reg.url}/v2/{repo}/manifests/{new}", data=raw,
                                 method="PUT", headers={"Content-Type": art.OCI_MANIFEST})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 201
    return new, len(raw)


def _fields(refs: list[Any]) -> list[tuple[str, str, str, int, dict[str, str]]]:
    """Every field of registry_client Referrers (annotations do not take part in ==)."""
    return [(r.digest, r.media_type, r.artifact_type, r.size, r.annotations) for r in refs]


async def test_read_referrers_on_2_8_2_reads_the_tag_index(
    server: tuple[RunningServer, EndpointStore], registry: RegistryProcess,
    images: ImageBuilder, tmp_path: Path,
) -> None:
    running, store = server
    img = images.image("1.0")
    push(img, registry, "dev/app")
    bare = images.image("2.0")
    push(bare, registry, "dev/app")
    sbom = art.push_sbom(registry, "dev/app", img.digest, len(img.manifest), tmp_path / "a")
    sig = art.push_sbom(registry, "dev/app", img.digest, len(img.manifest), tmp_path / "b",
                        name="sig", media_type=COSIGN_SIG)
    noted, noted_size = _annotated_copy(registry, "dev/app", sbom.digest)
    art._add_to_tag_index(registry, art._oras(registry), "dev/app", img.digest, {
        "mediaType": art.OCI_MANIFEST, "digest": noted, "size": noted_size,
        "artifactType": art.SPDX, "annotations": ANNOTATIONS})
    channel = _channel(running, ADMIN)
    try:
        stub = transfer_pb2_grpc.TransferServiceStub(channel)
        await stub.CreateEndpoint(
            transfer_pb2.CreateEndpointRequest(endpoint=endpoint_msg("dev", registry.url)))
        got = await stub.ReadReferrers(transfer_pb2.ReadReferrersRequest(
            endpoint="dev", repository="dev/app", digest=img.digest))
        assert not got.api  # 2.8.2 has no referrers API: the sha256-<hex> index was read
        assert [(d.digest, d.artifact_type, d.media_type) for d in got.referrers] == [
            (sbom.digest, art.SPDX, art.OCI_MANIFEST), (sig.digest, COSIGN_SIG, art.OCI_MANIFEST),
            (noted, art.SPDX, art.OCI_MANIFEST)]
        assert [d.size for d in got.referrers] == [
            len(art.manifest(registry, "dev/app", d)[1]) for d in (sbom.digest, sig.digest)
        ] + [noted_size]
        assert [dict(d.annotations) for d in got.referrers] == [{}, {}, ANNOTATIONS]
        only = await stub.ReadReferrers(transfer_pb2.ReadReferrersRequest(
            endpoint="dev", repository="dev/app", digest=img.digest, artifact_type=COSIGN_SIG))
        assert [d.digest for d in only.referrers] == [sig.digest]
        probe = await stub.ReadReferrers(transfer_pb2.ReadReferrersRequest(
            endpoint="dev", repository="dev/app", digest=img.digest, api_only=True))
        assert not probe.api and not probe.referrers

        async with RemoteEndpoints(channel).client_for("dev") as rc, \
                store.client_for("dev") as local:
            for digest, kind in ((img.digest, ""), (img.digest, art.SPDX), (bare.digest, "")):
                remote = await rc.list_referrers("dev/app", digest, kind)
                assert remote == await local.list_referrers("dev/app", digest, kind)
                assert _fields(remote) == _fields(await local.list_referrers(
                    "dev/app", digest, kind))
            assert [r.digest for r in await rc.list_referrers("dev/app", img.digest)] == [
                sbom.digest, sig.digest, noted]
            assert (await rc.list_referrers("dev/app", img.digest))[2].annotations == ANNOTATIONS
            assert await rc.list_referrers("dev/app", bare.digest) == []
            assert await rc.has_referrers_api("dev/app", img.digest) is False
            assert await local.has_referrers_api("dev/app", img.digest) is False
            # Not a sha256 digest: the InvalidRequest RegistryClient raises.
            for client in (rc, local):
                with pytest.raises(rc_errors.InvalidRequest, match="sha256 digest"):
                    await client.list_referrers("dev/app", "blake3:" + "0" * 64)
    finally:
        await channel.close()


async def test_read_referrers_through_the_referrers_api(
    server: tuple[RunningServer, EndpointStore], registry: RegistryProcess,
    shim: ReferrersShim, images: ImageBuilder, tmp_path: Path,
) -> None:
    running, store = server
    img = images.image("1.0")
    push(img, registry, "dev/app")
    # Pushed through the API registry: no tag index (the registry lists them).
    sbom = art.push_sbom(shim, "dev/app", img.digest, len(img.manifest), tmp_path / "a",
                         tag_index=False)
    sig = art.push_sbom(shim, "dev/app", img.digest, len(img.manifest), tmp_path / "b",
                        name="sig", media_type=COSIGN_SIG, tag_index=False)
    noted, _ = _annotated_copy(shim, "dev/app", sig.digest)  # the shim lists its annotations
    channel = _channel(running, ADMIN)
    try:
        stub = transfer_pb2_grpc.TransferServiceStub(channel)
        await stub.CreateEndpoint(
            transfer_pb2.CreateEndpointRequest(endpoint=endpoint_msg("api", shim.url)))
        shim.log.clear()
        got = await stub.ReadReferrers(transfer_pb2.ReadReferrersRequest(
            endpoint="api", repository="dev/app", digest=img.digest))
        assert got.api
        assert [(d.digest, d.artifact_type) for d in got.referrers] == [
            (sbom.digest, art.SPDX), (sig.digest, COSIGN_SIG), (noted, COSIGN_SIG)]
        # The annotations the registry lists come through.
        assert [dict(d.annotations) for d in got.referrers] == [{}, {}, ANNOTATIONS]
        # The probe's page, then the three pages (one descriptor each); no index tag read.
        assert len(shim.requests("GET", r"/referrers/")) == 1 + 3
        assert not shim.requests("GET", r"/manifests/sha256-")
        shim.log.clear()
        probe = await stub.ReadReferrers(transfer_pb2.ReadReferrersRequest(
            endpoint="api", repository="dev/app", digest=img.digest, api_only=True))
        assert probe.api and not probe.referrers
        assert len(shim.log) == 1  # api_only: one page asked, as has_referrers_api

        async with RemoteEndpoints(channel).client_for("api") as rc, \
                store.client_for("api") as local:
            for kind in ("", COSIGN_SIG, "application/x-none"):
                remote = await rc.list_referrers("dev/app", img.digest, kind)
                in_process = await local.list_referrers("dev/app", img.digest, kind)
                assert remote == in_process and _fields(remote) == _fields(in_process)
                assert [r.raw for r in remote] == [r.raw for r in in_process]
            assert [r.digest for r in await rc.list_referrers("dev/app", img.digest, COSIGN_SIG)
                    ] == [sig.digest, noted]
            assert await rc.has_referrers_api("dev/app", img.digest) is True
            assert await local.has_referrers_api("dev/app", img.digest) is True
            # The scanner through the transfer service now sees the API's referrers (no
            # index tag exists on this registry): the SBOM is read.
            reports = await attached_reports(rc, "dev/app", img.digest, Limits())
            assert [src for src, _ in reports] == [f"referrer:{sbom.digest}"]
            assert [c.name for c in reports[0][1].components] == ["busybox"]
    finally:
        await channel.close()


async def test_read_referrers_errors_and_bounds(
    server: tuple[RunningServer, EndpointStore], registry: RegistryProcess,
    shim: ReferrersShim, images: ImageBuilder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    running, _ = server
    img = images.image("1.0")
    push(img, registry, "dev/app")
    for i in range(2):
        art.push_sbom(registry, "dev/app", img.digest, len(img.manifest), tmp_path / str(i),
                      name=f"s{i}")
    channel = _channel(running, ADMIN)
    try:
        stub = transfer_pb2_grpc.TransferServiceStub(channel)
        for name, url in (("dev", registry.url), ("api", shim.url)):
            await stub.CreateEndpoint(
                transfer_pb2.CreateEndpointRequest(endpoint=endpoint_msg(name, url)))
        req = transfer_pb2.ReadReferrersRequest(
            endpoint="dev", repository="dev/app", digest=img.digest)

        # An unknown endpoint: NOT_FOUND, the ApiError EndpointStore.client_for raises.
        with pytest.raises(aio.AioRpcError) as err:
            await stub.ReadReferrers(transfer_pb2.ReadReferrersRequest(
                endpoint="nope", repository="dev/app", digest=img.digest))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        async with RemoteEndpoints(channel).client_for("nope") as rc:
            with pytest.raises(ApiError) as exc:
                await rc.list_referrers("dev/app", img.digest)
            assert exc.value.code == grpc.StatusCode.NOT_FOUND
            with pytest.raises(ApiError):
                await rc.has_referrers_api("dev/app", img.digest)
        # Bad requests, checked before the registry is asked.
        for bad in (
            transfer_pb2.ReadReferrersRequest(repository="dev/app", digest=img.digest),
            transfer_pb2.ReadReferrersRequest(endpoint="dev", repository="Dev/App",
                                              digest=img.digest),
            transfer_pb2.ReadReferrersRequest(endpoint="dev", repository="dev/app",
                                              digest="1.0"),
        ):
            with pytest.raises(aio.AioRpcError) as err:
                await stub.ReadReferrers(bad)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
        # A digest the registry client refuses: its InvalidRequest, FAILED_PRECONDITION here.
        with pytest.raises(aio.AioRpcError) as err:
            await stub.ReadReferrers(transfer_pb2.ReadReferrersRequest(
                endpoint="dev", repository="dev/app", digest="blake3:" + "0" * 64))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "sha256 digest" in (err.value.details() or "")

        # Bounded answers: over the count or the bytes is a registry error, not a huge reply.
        assert len((await stub.ReadReferrers(req)).referrers) == 2
        monkeypatch.setattr(referrer_reads, "MAX_REFERRERS", 1)
        with pytest.raises(aio.AioRpcError) as err:
            await stub.ReadReferrers(req)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "2 listed" in (err.value.details() or "")
        async with RemoteEndpoints(channel).client_for("dev") as rc:
            with pytest.raises(rc_errors.RegistryError) as failed:
                await rc.list_referrers("dev/app", img.digest)
            assert type(failed.value) is rc_errors.RegistryError
            assert not failed.value.retryable  # callers fall back to the tag scheme
        monkeypatch.setattr(referrer_reads, "MAX_REFERRERS", 1000)
        monkeypatch.setattr(referrer_reads, "MAX_ANSWER_BYTES", 200)
        with pytest.raises(aio.AioRpcError) as err:
            await stub.ReadReferrers(req)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "bytes of descriptors" in (err.value.details() or "")
        assert referrer_reads.MAX_ANSWER_BYTES < 4 << 20  # fits gRPC's default limit

        # A referrers API that pages forever: RegistryClient's own error, kept as it is.
        shim.self_link = True
        with pytest.raises(aio.AioRpcError) as err:
            await stub.ReadReferrers(transfer_pb2.ReadReferrersRequest(
                endpoint="api", repository="dev/app", digest=img.digest))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "too many pages" in (err.value.details() or "")
    finally:
        await channel.close()
