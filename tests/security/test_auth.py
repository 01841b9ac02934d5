"""Bearer tokens on a real gRPC server: missing/wrong -> UNAUTHENTICATED, read -> no writes."""

from __future__ import annotations

import asyncio
import logging
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mirror import aio as mirror_aio
from mirror import errors

from servicekit.auth import (
    Role,
    TokenAuthenticator,
    TokenFileError,
    load_tokens,
    parse_tokens,
    required_role,
)
from servicekit.security import ServerSecurity
from servicekit.server import RunningServer, start_server
from tests.security.servicers import PolicyStub, TransferStub

ADMIN = "admin-token-0123456789abcdef"
READ = "read-token-0123456789abcdef"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# operators\nadmin:{ADMIN}\n\nread:{READ}\n")
    sec = ServerSecurity.build(tokens_file=str(tokens), environ={})
    assert sec.auth_enabled
    running = await start_server(
        [PolicyStub(), TransferStub()], "127.0.0.1:0", interceptors=sec.interceptors
    )
    yield running
    await running.stop(0)


def _client(server: RunningServer, token: str | None) -> mirror_aio.AsyncClient:
    return mirror_aio.connect(f"127.0.0.1:{server.port}", token=token, timeout=10)


async def test_missing_token_is_unauthenticated(server: RunningServer) -> None:
    async with _client(server, None) as c:
        with pytest.raises(errors.Unauthenticated) as exc:
            await c.policies.list()
    assert "bearer token" in exc.value.message


async def test_wrong_token_is_unauthenticated(server: RunningServer) -> None:
    async with _client(server, "not-a-valid-token-at-all") as c:
        with pytest.raises(errors.Unauthenticated):
            await c.policies.list()
        with pytest.raises(errors.Unauthenticated):
            async for _ in c.transfers.watch("t1"):
                pass


async def test_read_token_reads_but_cannot_write(server: RunningServer) -> None:
    async with _client(server, READ) as c:
        page = await c.policies.list()
        assert list(page.policies) == []
        states = [t.state async for t in c.transfers.watch("t1")]
        assert len(states) == 2
        with pytest.raises(errors.PermissionDenied) as exc:
            await c.policies.create(
                name="p", rule="true", source_endpoint="dev", source_repository="team/app"
            )
        assert "admin token" in exc.value.message
        with pytest.raises(errors.PermissionDenied):
            await c.transfers.cancel("t1")


async def test_admin_token_writes(server: RunningServer) -> None:
    async with _client(server, ADMIN) as c:
        created = await c.policies.create(
            name="p1", rule='tag == "x"', source_endpoint="dev", source_repository="team/app"
        )
        assert created.name == "p1"
        names = [p.name async for p in c.policies.iter()]
        assert names == ["p1"]
        # Errors from the servicer still reach the caller with their code.
        with pytest.raises(errors.NotFound):
            await c.policies.get("nope")


async def test_health_is_open_without_token(server: RunningServer) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        resp = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_is_open_without_token(server: RunningServer) -> None:
    proc = await asyncio.create_subprocess_exec(
        str(ROOT / ".venv/bin/grpcurl"), "-plaintext", f"127.0.0.1:{server.port}", "list",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert "mirror.v1.PolicyService" in out.decode().split()


async def test_refusals_are_logged_without_the_token(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with _client(server, "wrong-token-but-long-enough") as c:
        with pytest.raises(errors.Unauthenticated):
            await c.policies.list()
    async with _client(server, READ) as c:
        with pytest.raises(errors.PermissionDenied):
            await c.policies.create(name="p", source_endpoint="dev", source_repository="team/app")
    text = caplog.text
    assert "refused /mirror.v1.PolicyService/ListPolicies: unknown token" in text
    assert "refused /mirror.v1.PolicyService/CreatePolicy: read-only token" in text
    assert "wrong-token-but-long-enough" not in text
    assert READ not in text


def test_required_role_table() -> None:
    read = [
        "ListPolicies", "GetPolicy", "WatchTransfer", "Evaluate", "EvaluateRule",
        "ValidateRule", "GetFactRequirements", "GetPolicyStatus", "ListRuns", "GetScan",
        "ListEndpoints", "GetEndpoint", "ListTransfers", "GetTransfer",
    ]
    admin = [
        "CreatePolicy", "UpdatePolicy", "DeletePolicy", "CreateEndpoint", "UpdateEndpoint",
        "DeleteEndpoint", "TestConnection", "StartTransfer", "CancelTransfer", "NotifyPush",
        "ApplyPolicy", "Reconcile", "ScanImage", "ImportVulnerabilities", "ImportReport",
    ]
    for name in read:
        assert required_role(f"/mirror.v1.X/{name}") is Role.READ, name
    for name in admin:
        assert required_role(f"/mirror.v1.X/{name}") is Role.ADMIN, name
    assert required_role("/grpc.health.v1.Health/Check") is None
    assert required_role("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo") is None


def test_tokens_file_errors_name_the_line_not_the_token() -> None:
    with pytest.raises(TokenFileError) as exc:
        parse_tokens("admin:" + "a" * 20 + "\nroot:secret-value-123456789\n", "t.txt")
    assert "t.txt line 2" in str(exc.value)
    assert "secret-value" not in str(exc.value)
    with pytest.raises(TokenFileError, match="shorter than 16"):
        parse_tokens("read:short")


def test_env_tokens_and_highest_role_wins() -> None:
    tokens = load_tokens(None, {"MIRROR_ADMIN_TOKEN": ADMIN, "MIRROR_READ_TOKEN": READ})
    auth = TokenAuthenticator(tokens)
    assert auth.role_of(ADMIN) is Role.ADMIN
    assert auth.role_of(READ) is Role.READ
    assert auth.role_of(ADMIN[:-1]) is None
    assert auth.role_of("") is None
    assert not TokenAuthenticator(load_tokens(None, {}))


def test_no_tokens_means_no_auth_interceptor() -> None:
    sec = ServerSecurity.build(environ={})
    assert not sec.auth_enabled
    assert [type(i).__name__ for i in sec.interceptors] == ["RequestLogInterceptor"]
