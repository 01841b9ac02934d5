"""Endpoint.webhook_secret (issue 10): stored encrypted, never returned, set and cleared with
the update_mask rules of `secret`; VerifyWebhookSecret answers yes/no, to admin tokens only."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import field_mask_pb2
from grpc import aio
from mirror.v1 import transfer_pb2, transfer_pb2_grpc

from servicekit.auth import AuthInterceptor, Role, Token, TokenAuthenticator
from servicekit.server import start_server
from tests.transfer.transfer_support import Served, endpoint_msg, rpc_details

HOOK = "hook-Secret-Marker-0c5e2a91d7"
ADMIN = "admin-token-0123456789abcdef"
READ = "read-token-0123456789abcdef"


async def _verify(
    s: Served, endpoint: str, secret: str
) -> transfer_pb2.VerifyWebhookSecretResponse:
    return await s.stub.VerifyWebhookSecret(
        transfer_pb2.VerifyWebhookSecretRequest(endpoint=endpoint, secret=secret)
    )


async def test_webhook_secret_stored_encrypted_never_returned_and_verified(
    endpoints_only: Served,
) -> None:
    s = endpoints_only
    created = await s.stub.CreateEndpoint(
        transfer_pb2.CreateEndpointRequest(
            endpoint=endpoint_msg("dev", "http://127.0.0.1:5000", webhook_secret=HOOK)
        )
    )
    assert created.has_webhook_secret and created.webhook_secret == ""
    got = await s.stub.GetEndpoint(transfer_pb2.GetEndpointRequest(name="dev"))
    assert got.has_webhook_secret and got.webhook_secret == "" and not got.has_secret
    listed = await s.stub.ListEndpoints(transfer_pb2.ListEndpointsRequest())
    assert all(e.webhook_secret == "" for e in listed.endpoints)
    raw = b"".join(p.read_bytes() for p in s.data.glob("transfer.db*"))
    assert HOOK.encode() not in raw  # encrypted at rest (the WAL included)

    ok = await _verify(s, "dev", HOOK)
    assert ok.ok and ok.has_webhook_secret
    for wrong in (HOOK[:-1], HOOK + "x", "", HOOK.upper()):
        r = await _verify(s, "dev", wrong)
        assert not r.ok and r.has_webhook_secret

    # Empty mask keeps it; a named path with an empty value clears it; a new one replaces it.
    async def update(paths: list[str] | None, **kw: object) -> transfer_pb2.Endpoint:
        return await s.stub.UpdateEndpoint(
            transfer_pb2.UpdateEndpointRequest(
                endpoint=endpoint_msg("dev", **kw),  # type: ignore[arg-type]
                update_mask=field_mask_pb2.FieldMask(paths=paths) if paths is not None else None,
            )
        )

    assert (await update(None, scan_on_push=True)).has_webhook_secret
    assert (await update(None, url="http://127.0.0.1:5001")).has_webhook_secret
    ep = await update(["webhook_secret"], webhook_secret=HOOK + "-2")
    assert ep.has_webhook_secret and (await _verify(s, "dev", HOOK + "-2")).ok
    assert not (await _verify(s, "dev", HOOK)).ok
    ep = await update(["webhook_secret"])
    assert not ep.has_webhook_secret
    r = await _verify(s, "dev", HOOK + "-2")
    assert not r.ok and not r.has_webhook_secret
    assert not (await _verify(s, "dev", "")).ok

    with pytest.raises(aio.AioRpcError) as info:
        await _verify(s, "nope", HOOK)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_bad_webhook_secret_and_output_only_refused_without_echo(
    endpoints_only: Served,
) -> None:
    s = endpoints_only
    for bad in ("short-Xq9", "has a space in it Xq9-long-enough"):
        with pytest.raises(aio.AioRpcError) as info:
            await s.stub.CreateEndpoint(
                transfer_pb2.CreateEndpointRequest(
                    endpoint=endpoint_msg("dev", "http://127.0.0.1:5000", webhook_secret=bad)
                )
            )
        code, fields, _ = rpc_details(info.value)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert [f for f, _ in fields] == ["endpoint.webhook_secret"]
        assert "Xq9" not in f"{info.value.details()} {fields}"
    with pytest.raises(aio.AioRpcError) as info:
        await s.stub.CreateEndpoint(
            transfer_pb2.CreateEndpointRequest(
                endpoint=endpoint_msg("dev", "http://127.0.0.1:5000", has_webhook_secret=True)
            )
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_verify_webhook_secret_needs_an_admin_token(endpoints_only: Served) -> None:
    """A yes/no oracle on a credential: read-only tokens may not call it (the gateway calls
    it with the service's admin token)."""
    s = endpoints_only
    await s.stub.CreateEndpoint(
        transfer_pb2.CreateEndpointRequest(
            endpoint=endpoint_msg("dev", "http://127.0.0.1:5000", webhook_secret=HOOK)
        )
    )
    auth = AuthInterceptor(
        TokenAuthenticator([Token(Role.ADMIN, ADMIN.encode()), Token(Role.READ, READ.encode())])
    )
    server = await start_server([s.servicer], "127.0.0.1:0", interceptors=[auth])
    try:
        async with aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            stub = transfer_pb2_grpc.TransferServiceStub(ch)
            req = transfer_pb2.VerifyWebhookSecretRequest(endpoint="dev", secret=HOOK)
            with pytest.raises(aio.AioRpcError) as info:
                await stub.VerifyWebhookSecret(req, metadata=[("authorization", f"Bearer {READ}")])
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            resp = await stub.VerifyWebhookSecret(
                req, metadata=[("authorization", f"Bearer {ADMIN}")]
            )
            assert resp.ok
    finally:
        await server.stop(0)
