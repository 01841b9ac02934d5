"""TLS and mutual TLS on the gRPC port, with certificates made by trustme."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio
import pytest
import trustme
from mirror import aio as mirror_aio
from mirror import errors
from mirror.channel import TlsOptions
from mirror.v1 import policy_pb2, policy_pb2_grpc

from servicekit.security import ServerSecurity
from servicekit.server import RunningServer, start_server
from tests.security.servicers import PolicyStub


def _write(tmp: Path, name: str, data: bytes) -> str:
    path = tmp / name
    path.write_bytes(data)
    return str(path)


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


async def _serve(tmp: Path, ca: trustme.CA, client_ca: bool) -> RunningServer:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    sec = ServerSecurity.build(
        tls_cert=_write(tmp, "server.pem", b"".join(c.bytes() for c in cert.cert_chain_pems)),
        tls_key=_write(tmp, "server.key", cert.private_key_pem.bytes()),
        tls_client_ca=_write(tmp, "client-ca.pem", ca.cert_pem.bytes()) if client_ca else None,
        environ={},
    )
    return await start_server([PolicyStub()], "127.0.0.1:0", tls=sec.tls,
                              interceptors=sec.interceptors)


@pytest.fixture
async def tls_server(tmp_path: Path, ca: trustme.CA) -> AsyncIterator[RunningServer]:
    running = await _serve(tmp_path, ca, client_ca=False)
    yield running
    await running.stop(0)


@pytest.fixture
async def mtls_server(tmp_path: Path, ca: trustme.CA) -> AsyncIterator[RunningServer]:
    running = await _serve(tmp_path, ca, client_ca=True)
    yield running
    await running.stop(0)


async def test_tls_with_private_ca(tls_server: RunningServer, ca: trustme.CA) -> None:
    tls = TlsOptions(ca_pem=ca.cert_pem.bytes())
    async with mirror_aio.connect(f"127.0.0.1:{tls_server.port}", tls=tls, timeout=10) as c:
        assert list((await c.policies.list()).policies) == []


async def test_tls_refuses_an_unknown_ca(tls_server: RunningServer) -> None:
    other = trustme.CA()
    tls = TlsOptions(ca_pem=other.cert_pem.bytes())
    async with mirror_aio.connect(f"127.0.0.1:{tls_server.port}", tls=tls, timeout=5) as c:
        with pytest.raises(errors.Unavailable):
            await c.policies.list()


async def test_plaintext_client_is_refused_by_tls_server(tls_server: RunningServer) -> None:
    async with mirror_aio.connect(f"127.0.0.1:{tls_server.port}", timeout=5) as c:
        with pytest.raises(errors.Unavailable):
            await c.policies.list()


async def test_mtls_with_client_certificate(mtls_server: RunningServer, ca: trustme.CA) -> None:
    client = ca.issue_cert("mirrorctl@example.test")
    tls = TlsOptions(
        ca_pem=ca.cert_pem.bytes(),
        cert_pem=b"".join(c.bytes() for c in client.cert_chain_pems),
        key_pem=client.private_key_pem.bytes(),
    )
    async with mirror_aio.connect(f"127.0.0.1:{mtls_server.port}", tls=tls, timeout=10) as c:
        assert list((await c.policies.list()).policies) == []


async def test_mtls_refuses_client_without_certificate(
    mtls_server: RunningServer, ca: trustme.CA
) -> None:
    tls = TlsOptions(ca_pem=ca.cert_pem.bytes())
    async with mirror_aio.connect(f"127.0.0.1:{mtls_server.port}", tls=tls, timeout=5) as c:
        with pytest.raises(errors.Unavailable):
            await c.policies.list()


async def test_mtls_refuses_certificate_from_another_ca(
    mtls_server: RunningServer, ca: trustme.CA
) -> None:
    stranger = trustme.CA().issue_cert("intruder@example.test")
    tls = TlsOptions(
        ca_pem=ca.cert_pem.bytes(),
        cert_pem=b"".join(c.bytes() for c in stranger.cert_chain_pems),
        key_pem=stranger.private_key_pem.bytes(),
    )
    async with mirror_aio.connect(f"127.0.0.1:{mtls_server.port}", tls=tls, timeout=5) as c:
        with pytest.raises(errors.Unavailable):
            await c.policies.list()


def test_bad_tls_arguments_are_explained(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="go together"):
        ServerSecurity.build(tls_cert=str(tmp_path / "x.pem"), environ={})
    with pytest.raises(ValueError, match="needs --tls-cert"):
        ServerSecurity.build(tls_client_ca=str(tmp_path / "ca.pem"), environ={})


async def test_peer_channel_uses_mtls_and_the_admin_token(
    tmp_path: Path, ca: trustme.CA
) -> None:
    """ServerSecurity.channel (outbound calls between services) against an mTLS server
    that requires tokens: TLS material from --peer-*, the admin token on each call."""
    token = "peer-admin-token-0123456789"
    cert = ca.issue_cert("127.0.0.1")
    server_sec = ServerSecurity.build(
        tls_cert=_write(tmp_path, "s.pem", b"".join(c.bytes() for c in cert.cert_chain_pems)),
        tls_key=_write(tmp_path, "s.key", cert.private_key_pem.bytes()),
        tls_client_ca=_write(tmp_path, "ca.pem", ca.cert_pem.bytes()),
        environ={"MIRROR_ADMIN_TOKEN": token},
    )
    stub = PolicyStub()
    running = await start_server([stub], "127.0.0.1:0", tls=server_sec.tls,
                                 interceptors=server_sec.interceptors)
    client = ca.issue_cert("policy-service@example.test")
    peer_files = {
        "peer_ca": str(tmp_path / "ca.pem"),
        "peer_cert": _write(tmp_path, "c.pem",
                            b"".join(c.bytes() for c in client.cert_chain_pems)),
        "peer_key": _write(tmp_path, "c.key", client.private_key_pem.bytes()),
    }
    address = f"127.0.0.1:{running.port}"
    try:
        dialer = ServerSecurity.build(environ={"MIRROR_ADMIN_TOKEN": token}, **peer_files)
        async with dialer.channel(address) as ch:
            made = await policy_pb2_grpc.PolicyServiceStub(ch).CreatePolicy(
                policy_pb2.CreatePolicyRequest(policy=policy_pb2.Policy(name="via-peer")),
                timeout=10,
            )
        assert made.name == "via-peer" and [p.name for p in stub.created] == ["via-peer"]
        # Without the client certificate the handshake fails; without a peer CA the channel
        # is plaintext and fails too; without the token the call is unauthenticated.
        for sec, code in [
            (ServerSecurity.build(environ={"MIRROR_ADMIN_TOKEN": token},
                                  peer_ca=peer_files["peer_ca"]), grpc.StatusCode.UNAVAILABLE),
            (ServerSecurity.build(environ={"MIRROR_ADMIN_TOKEN": token}),
             grpc.StatusCode.UNAVAILABLE),
            (ServerSecurity.build(environ={}, **peer_files), grpc.StatusCode.UNAUTHENTICATED),
        ]:
            async with sec.channel(address) as ch:
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    await policy_pb2_grpc.PolicyServiceStub(ch).ListPolicies(
                        policy_pb2.ListPoliciesRequest(), timeout=5
                    )
            assert failed.value.code() == code
    finally:
        await running.stop(0)


def test_bad_peer_arguments_are_explained(tmp_path: Path) -> None:
    pem = _write(tmp_path, "x.pem", b"")
    with pytest.raises(ValueError, match="--peer-cert and --peer-key go together"):
        ServerSecurity.build(peer_ca=pem, peer_cert=pem, environ={})
    with pytest.raises(ValueError, match="need --peer-ca"):
        ServerSecurity.build(peer_cert=pem, peer_key=pem, environ={})
    assert ServerSecurity.build(environ={}).peer is None
