"""Registry reads through the transfer service (HeadManifest, ReadManifest, ReadBlob, ReadTags)
with transfer_service.remote: the same answers and error types as the in-process client, and
an admin token only (a read token must not read private images through the mirror)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

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
from servicekit.auth import Role, outbound_interceptors, parse_tokens, required_role
from servicekit.errors import ApiError
from servicekit.security import ServerSecurity
from servicekit.server import RunningServer, start_server
from tests.transfer.transfer_support import endpoint_msg
from transfer_service import registry_reads
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
    for method in ("HeadManifest", "ReadManifest", "ReadBlob", "ReadTags"):
        assert required_role(f"/mirror.v1.TransferService/{method}") == Role.ADMIN, method
