"""Endpoint CRUD over gRPC: secrets never returned and encrypted at rest, validation errors."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import grpc
import pytest
import trustme
from cryptography.fernet import Fernet
from google.protobuf import field_mask_pb2
from grpc import aio
from mirror.v1 import transfer_pb2

from servicekit.db import SqliteDatabase
from tests.transfer.transfer_support import Served, ServeFn, endpoint_msg, rpc_details, stop_served
from transfer_service.endpoints import EndpointRecord
from transfer_service.secrets import SecretKeyError

SECRET = "s3cr3t-Plaintext-Marker-7731"


async def _create(s: Served, **kw: object) -> transfer_pb2.Endpoint:
    return await s.stub.CreateEndpoint(
        transfer_pb2.CreateEndpointRequest(endpoint=endpoint_msg(**kw))  # type: ignore[arg-type]
    )


async def test_crud_secret_never_returned_and_encrypted_at_rest(
    endpoints_only: Served, caplog: pytest.LogCaptureFixture
) -> None:
    s = endpoints_only
    caplog.set_level(logging.DEBUG)
    ca = trustme.CA().cert_pem.bytes().decode()
    created = await _create(
        s,
        name="qa",
        url="https://qa.example.com:5443",
        username="mirror-bot",
        secret=SECRET,
        ca_pem=ca,
        max_concurrency=4,
        requests_per_second=2.5,
        scan_on_push=True,
        aliases=["qa-internal:5443", "10.0.0.7:5000"],
    )
    assert created.secret == "" and created.has_secret
    assert created.ca_pem == ca and list(created.aliases) == ["qa-internal:5443", "10.0.0.7:5000"]
    assert created.create_time.seconds > 0

    got = await s.stub.GetEndpoint(transfer_pb2.GetEndpointRequest(name="qa"))
    assert got.secret == "" and got.has_secret and got.username == "mirror-bot"
    listed = await s.stub.ListEndpoints(transfer_pb2.ListEndpointsRequest())
    assert [e.name for e in listed.endpoints] == ["qa"]
    assert all(e.secret == "" for e in listed.endpoints)

    # The service can still use the secret: it decrypts to the plaintext in memory.
    cfg = s.servicer.endpoints.config_for("qa")
    assert cfg.password == SECRET
    # The per-endpoint limits reach the registry client that talks to it.
    assert (cfg.max_concurrency, cfg.requests_per_second) == (4, 2.5)
    # ... but never in repr() of the record, in the log, or in the SQLite file (WAL included).
    assert SECRET not in repr(s.servicer.endpoints.get("qa"))
    assert SECRET not in caplog.text
    db = s.servicer.endpoints.db
    assert isinstance(db, SqliteDatabase)
    db.conn.execute("PRAGMA wal_checkpoint(FULL)")
    for f in s.data.iterdir():
        assert SECRET.encode() not in f.read_bytes(), f

    await s.stub.DeleteEndpoint(transfer_pb2.DeleteEndpointRequest(name="qa"))
    with pytest.raises(aio.AioRpcError) as info:
        await s.stub.GetEndpoint(transfer_pb2.GetEndpointRequest(name="qa"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(aio.AioRpcError) as info:
        await s.stub.DeleteEndpoint(transfer_pb2.DeleteEndpointRequest(name="qa"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_record_repr_hides_secret() -> None:
    r = EndpointRecord(name="a", url="http://x", username="u", secret=SECRET)
    assert SECRET not in repr(r) and "u" in repr(r)


async def test_already_exists(endpoints_only: Served) -> None:
    await _create(endpoints_only, name="dev", url="http://127.0.0.1:5000")
    with pytest.raises(aio.AioRpcError) as info:
        await _create(endpoints_only, name="dev", url="http://127.0.0.1:5001")
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS


@pytest.mark.parametrize(
    ("kw", "field", "needle"),
    [
        ({"name": "QA!", "url": "http://h"}, "endpoint.name", "not a valid name"),
        ({"name": "", "url": "http://h"}, "endpoint.name", "required"),
        ({"name": "a", "url": "ftp://h"}, "endpoint.url", "scheme must be http or https"),
        ({"name": "a", "url": "https://"}, "endpoint.url", "no host"),
        ({"name": "a", "url": "http://h/v2/x"}, "endpoint.url", "only scheme, host and port"),
        ({"name": "a", "url": "http://u:p@h"}, "endpoint.url", "must not contain credentials"),
        ({"name": "a", "url": "http://h:99999"}, "endpoint.url", "not a valid URL"),
        ({"name": "a", "url": "https://h", "ca_pem": "garbage"}, "endpoint.ca_pem", "not a PEM"),
        (
            {
                "name": "a",
                "url": "https://h",
                "ca_pem": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            },
            "endpoint.ca_pem",
            "not a valid PEM certificate",
        ),
        ({"name": "a", "url": "http://h", "secret": "x"}, "endpoint.username", "required"),
        ({"name": "a", "url": "http://h", "max_concurrency": -1}, "endpoint.max_concurrency",
         "between 0 and"),
        ({"name": "a", "url": "http://h", "requests_per_second": float("nan")},
         "endpoint.requests_per_second", "finite"),
        ({"name": "a", "url": "http://h", "aliases": ["bad host"]}, "endpoint.aliases[0]",
         "not a host"),
        ({"name": "a", "url": "http://h", "aliases": ["h:1", "H:1"]}, "endpoint.aliases[1]",
         "listed twice"),
    ],
)
async def test_validation_field_violations(
    endpoints_only: Served, kw: dict[str, object], field: str, needle: str
) -> None:
    with pytest.raises(aio.AioRpcError) as info:
        await _create(endpoints_only, **kw)
    code, fields, _ = rpc_details(info.value)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert any(f == field and needle in d for f, d in fields), fields
    # Nothing was stored.
    listed = await endpoints_only.stub.ListEndpoints(transfer_pb2.ListEndpointsRequest())
    assert list(listed.endpoints) == []


async def test_validation_does_not_echo_secret(endpoints_only: Served) -> None:
    with pytest.raises(aio.AioRpcError) as info:
        await _create(endpoints_only, name="a", url="nope", secret=SECRET)
    assert SECRET not in str(info.value.details()) and SECRET not in repr(info.value)


async def test_update_mask_semantics(endpoints_only: Served) -> None:
    s = endpoints_only
    await _create(s, name="qa", url="http://127.0.0.1:5000", username="u", secret="old",
                  scan_on_push=True)

    async def update(paths: list[str] | None, **kw: object) -> transfer_pb2.Endpoint:
        return await s.stub.UpdateEndpoint(
            transfer_pb2.UpdateEndpointRequest(
                endpoint=endpoint_msg(name="qa", **kw),  # type: ignore[arg-type]
                update_mask=field_mask_pb2.FieldMask(paths=paths) if paths is not None else None,
            )
        )

    # Empty mask: only the non-default fields given change; the rest (and the secret) stay.
    ep = await update(None, scan_on_push=True, max_concurrency=3)
    assert ep.url == "http://127.0.0.1:5000" and ep.username == "u" and ep.max_concurrency == 3
    assert ep.has_secret and s.servicer.endpoints.config_for("qa").password == "old"
    # A URL naming another registry (here another port) clears the secret; the user stays.
    ep = await update(None, url="http://127.0.0.1:5001")
    assert ep.url == "http://127.0.0.1:5001" and ep.username == "u" and ep.scan_on_push
    assert not ep.has_secret and s.servicer.endpoints.config_for("qa").password == ""
    # The secret can be replaced...
    ep = await update(["secret"], secret="new")
    assert s.servicer.endpoints.config_for("qa").password == "new" and ep.secret == ""
    # ... and a field named in the mask is set even to its default (clearing it).
    ep = await update(["scan_on_push", "secret", "username"])
    assert not ep.scan_on_push and not ep.has_secret and ep.username == ""
    assert ep.update_time.ToNanoseconds() >= ep.create_time.ToNanoseconds()

    for paths, needle in (
        (["nonsense"], "unknown field"),
        (["name"], "cannot be changed"),
        (["has_secret"], "output only"),
    ):
        with pytest.raises(aio.AioRpcError) as info:
            await update(paths)
        code, fields, _ = rpc_details(info.value)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert any(f == "update_mask" and needle in d for f, d in fields), fields

    # An update that makes the endpoint invalid is refused and changes nothing.
    with pytest.raises(aio.AioRpcError) as info:
        await update(["url"], url="gopher://x")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (await s.stub.GetEndpoint(transfer_pb2.GetEndpointRequest(name="qa"))).url == (
        "http://127.0.0.1:5001"
    )
    with pytest.raises(aio.AioRpcError) as info:
        await s.stub.UpdateEndpoint(
            transfer_pb2.UpdateEndpointRequest(endpoint=endpoint_msg(name="nope", url="http://h"))
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_list_paging(endpoints_only: Served) -> None:
    s = endpoints_only
    for i in range(5):
        await _create(s, name=f"ep-{i}", url=f"http://127.0.0.1:{5000 + i}")
    names: list[str] = []
    token = ""
    pages = 0
    while True:
        resp = await s.stub.ListEndpoints(
            transfer_pb2.ListEndpointsRequest(page_size=2, page_token=token)
        )
        names += [e.name for e in resp.endpoints]
        pages += 1
        token = resp.next_page_token
        if not token:
            break
    assert names == [f"ep-{i}" for i in range(5)] and pages == 3
    with pytest.raises(aio.AioRpcError) as info:
        await s.stub.ListEndpoints(transfer_pb2.ListEndpointsRequest(page_token="%%%"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_key_file_mode_and_wrong_key_refused(serve: ServeFn, tmp_path: Path) -> None:
    s = await serve()
    key = s.data / "secret.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    await _create(s, name="qa", url="http://127.0.0.1:5000", username="u", secret=SECRET)
    await stop_served(s)
    # Restarted with the same key file: the secret is still readable.
    s2 = await serve(s.data)
    assert s2.servicer.endpoints.config_for("qa").password == SECRET
    await stop_served(s2)
    # Started with another key: refused at startup with a clear message.
    other = tmp_path / "other.key"
    other.write_bytes(Fernet.generate_key())
    with pytest.raises(SecretKeyError, match="not the one it was encrypted with"):
        await serve(s.data, key_file=other)
