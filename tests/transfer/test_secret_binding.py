"""A secret is bound to the registry it was given for (issue 10, finding 1): moving an
endpoint's URL to another host, port or scheme clears it, and neither TestConnection nor a
transfer ever sends it to the new host (checked with a capture server)."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf import field_mask_pb2
from grpc import aio
from mirror.v1 import common_pb2, transfer_pb2

from registry_testkit.images import ImageBuilder, push
from registry_testkit.registry import RegistryProcess
from tests.transfer.capture import capture_server
from tests.transfer.transfer_support import Served, ServeFn, endpoint_msg, rpc_details

PASSWORD = "QA-pa55word-never-elsewhere-9931"
T = transfer_pb2.Transfer


async def _update(
    s: Served, paths: list[str] | None, **kw: object
) -> transfer_pb2.Endpoint:
    return await s.stub.UpdateEndpoint(
        transfer_pb2.UpdateEndpointRequest(
            endpoint=endpoint_msg(**kw),  # type: ignore[arg-type]
            update_mask=field_mask_pb2.FieldMask(paths=paths) if paths is not None else None,
        )
    )


async def _test_connection(s: Served, name: str) -> transfer_pb2.TestConnectionResponse:
    return await s.stub.TestConnection(
        transfer_pb2.TestConnectionRequest(endpoint=name, repository="qa/app", check_push=True)
    )


@pytest.mark.parametrize("paths", [None, ["url"]])
async def test_url_to_another_host_clears_secret_and_capture_never_sees_it(
    endpoints_only: Served, registry: RegistryProcess, paths: list[str] | None
) -> None:
    s = endpoints_only
    await s.stub.CreateEndpoint(
        transfer_pb2.CreateEndpointRequest(
            endpoint=endpoint_msg("qa", registry.url, username="qa-bot", secret=PASSWORD)
        )
    )
    async with capture_server() as cap:
        ep = await _update(s, paths, name="qa", url=cap.url)
        assert ep.url == cap.url and ep.username == "qa-bot" and not ep.has_secret
        assert s.servicer.endpoints.config_for("qa").password == ""
        resp = await _test_connection(s, "qa")
        assert not resp.ok and cap.requests > 0  # it did talk to the capture server
        assert not cap.saw_password(PASSWORD), cap.authorizations
        # Control: a secret given for the capture server's URL does reach it (the capture
        # would have seen the old one, had it been kept).
        await _update(s, ["secret"], name="qa", secret="given-for-capture-42")
        await _test_connection(s, "qa")
        assert cap.saw_password("given-for-capture-42")
        assert not cap.saw_password(PASSWORD)


async def test_scheme_change_clears_secret_and_new_secret_binds_to_new_url(
    endpoints_only: Served,
) -> None:
    s = endpoints_only
    await s.stub.CreateEndpoint(
        transfer_pb2.CreateEndpointRequest(
            endpoint=endpoint_msg("qa", "https://qa.example:5000", username="u", secret=PASSWORD)
        )
    )
    # Same host and port, only the path slash: the same registry, the secret stays.
    ep = await _update(s, ["url"], name="qa", url="https://QA.example:5000/")
    assert ep.has_secret
    ep = await _update(s, ["url"], name="qa", url="http://qa.example:5000")
    assert not ep.has_secret and ep.username == "u"
    # URL and secret in one update: the new secret is kept, for the new URL.
    ep = await _update(s, ["url", "secret"], name="qa", url="http://qa2.example", secret="n3w")
    assert ep.has_secret and s.servicer.endpoints.config_for("qa").password == "n3w"


async def test_stored_secret_for_another_origin_is_never_used(
    serve: ServeFn, registry: RegistryProcess, images: ImageBuilder
) -> None:
    """Defence in depth: a row whose URL no longer names the secret's origin (as an older
    program or a manual edit could leave) gives no password to TestConnection or transfers."""
    push(images.image("1.0"), registry, "team/app")
    s = await serve(max_attempts=1)
    for name, url in (("dev", registry.url), ("qa", "http://127.0.0.1:1")):
        await s.stub.CreateEndpoint(
            transfer_pb2.CreateEndpointRequest(
                endpoint=endpoint_msg(name, url, username="bot", secret=PASSWORD)
            )
        )
    async with capture_server() as cap:
        db = s.servicer.journal._db  # the service's own database, edited behind its back
        db.execute("UPDATE endpoints SET url = ? WHERE name = 'qa'", (cap.url,))
        assert s.servicer.endpoints.config_for("qa").password == ""
        got = await s.stub.GetEndpoint(transfer_pb2.GetEndpointRequest(name="qa"))
        assert not got.has_secret
        await _test_connection(s, "qa")
        t = await s.stub.StartTransfer(
            transfer_pb2.StartTransferRequest(
                source=common_pb2.ImageLocation(
                    endpoint="dev", repository="team/app", reference="1.0"
                ),
                destination=transfer_pb2.TransferDestination(endpoint="qa", repository="qa/app"),
            )
        )
        async with asyncio.timeout(60):
            while (
                job := await s.stub.GetTransfer(transfer_pb2.GetTransferRequest(id=t.id))
            ).state not in (T.STATE_ERROR, T.STATE_DONE):
                await asyncio.sleep(0.1)
        assert job.state == T.STATE_ERROR and cap.requests > 0
        assert not cap.saw_password(PASSWORD), cap.authorizations


@pytest.mark.parametrize(
    "url",
    [
        "https://user:hunter2-secret@",
        "https://user:hunter2-secret@host:5000",
        "user:hunter2-secret@host",
    ],
)
async def test_password_in_invalid_url_is_not_echoed(endpoints_only: Served, url: str) -> None:
    with pytest.raises(aio.AioRpcError) as info:
        await endpoints_only.stub.CreateEndpoint(
            transfer_pb2.CreateEndpointRequest(endpoint=endpoint_msg("x", url))
        )
    code, fields, _ = rpc_details(info.value)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert any(f == "endpoint.url" and "credentials" in d for f, d in fields), fields
    text = f"{info.value.details()} {fields} {info.value.debug_error_string()}"
    assert "hunter2" not in text
