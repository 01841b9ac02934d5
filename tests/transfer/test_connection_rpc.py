"""TestConnection over gRPC against real docker-registry processes."""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
import pytest
from grpc import aio
from mirror.v1 import transfer_pb2

from registry_testkit.ports import free_port
from registry_testkit.registry import RegistryProcess
from tests.transfer.transfer_support import Served, endpoint_msg, rpc_details

pytestmark = pytest.mark.registry

Check = transfer_pb2.ConnectionCheck
OK, FAILED, SKIPPED = Check.RESULT_OK, Check.RESULT_FAILED, Check.RESULT_SKIPPED
STEPS = [
    Check.STEP_REACHABLE,
    Check.STEP_TLS_VERIFIED,
    Check.STEP_AUTHENTICATED,
    Check.STEP_PULL_ALLOWED,
    Check.STEP_PUSH_ALLOWED,
]


async def _check(
    s: Served, repo: str = "team/app", push: bool = True, **ep: object
) -> transfer_pb2.TestConnectionResponse:
    await s.stub.CreateEndpoint(
        transfer_pb2.CreateEndpointRequest(endpoint=endpoint_msg(**ep))  # type: ignore[arg-type]
    )
    return await s.stub.TestConnection(
        transfer_pb2.TestConnectionRequest(endpoint=str(ep["name"]), repository=repo,
                                           check_push=push)
    )


def _results(resp: transfer_pb2.TestConnectionResponse) -> list[int]:
    assert [c.step for c in resp.checks] == STEPS[: len(resp.checks)]
    return [c.result for c in resp.checks]


def _uploads_left(reg: RegistryProcess, repo: str) -> list[Path]:
    """Upload sessions the registry still holds (their data or startedat files).

    2.8.2 rewrites an empty `hashstates/sha256/0` after it cancels an upload (its handler
    closes the writer once more); that file is no session and is not counted.
    """
    d = reg.storage / "docker/registry/v2/repositories" / repo / "_uploads"
    if not d.exists():
        return []
    return [p for p in d.rglob("*") if p.is_file() and p.name in ("data", "startedat")]


async def test_good_account_over_tls_and_push_check_leaves_nothing(
    endpoints_only: Served, tls_registry: RegistryProcess, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    resp = await _check(
        endpoints_only, name="qa", url=tls_registry.url, username="alice",
        secret=tls_registry.password_of("alice"), ca_pem=tls_registry.ca_pem,
    )
    assert _results(resp) == [OK, OK, OK, OK, OK], resp
    assert resp.ok
    assert "does not exist yet" in resp.checks[3].message  # NAME_UNKNOWN counts as allowed
    assert "test upload cancelled" in resp.checks[4].message
    # The upload session opened by the push check was cancelled: nothing left behind.
    repo_dir = tls_registry.storage / "docker/registry/v2/repositories/team/app"
    assert repo_dir.exists(), "the push check did not reach the registry"
    assert _uploads_left(tls_registry, "team/app") == []
    assert tls_registry.password_of("alice") not in caplog.text
    assert caplog.records, "nothing was logged: the check above would prove nothing"


async def test_wrong_password(endpoints_only: Served, tls_registry: RegistryProcess) -> None:
    resp = await _check(
        endpoints_only, name="qa", url=tls_registry.url, username="alice",
        secret="not-the-password", ca_pem=tls_registry.ca_pem,
    )
    assert _results(resp) == [OK, OK, FAILED, SKIPPED, SKIPPED]
    assert "credentials rejected by the registry" in resp.checks[2].message
    assert "not-the-password" not in str(resp)
    assert not resp.ok


async def test_untrusted_ca(endpoints_only: Served, tls_registry: RegistryProcess) -> None:
    resp = await _check(
        endpoints_only, name="qa", url=tls_registry.url, username="alice",
        secret=tls_registry.password_of("alice"),
    )
    assert _results(resp) == [OK, FAILED, SKIPPED, SKIPPED, SKIPPED]
    assert "certificate signed by unknown authority" in resp.checks[1].message
    assert not resp.ok


async def test_read_only_account_cannot_push(
    endpoints_only: Served, token_registry: RegistryProcess
) -> None:
    resp = await _check(
        endpoints_only, name="qa", url=token_registry.url, username="reader",
        secret=token_registry.password_of("reader"),
    )
    assert _results(resp) == [OK, SKIPPED, OK, OK, FAILED], resp
    assert "account can read but not push" in resp.checks[4].message
    assert not resp.ok


async def test_token_writer_ok_and_token_wrong_password(
    endpoints_only: Served, token_registry: RegistryProcess
) -> None:
    resp = await _check(
        endpoints_only, name="w", url=token_registry.url, username="writer",
        secret=token_registry.password_of("writer"),
    )
    assert _results(resp) == [OK, SKIPPED, OK, OK, OK] and resp.ok
    # DELETE of an upload needs the `delete` action on 2.8.2, which a push-only account lacks:
    # the check still reports push allowed and says the session is left to the registry's purge.
    assert "can push" in resp.checks[4].message or "purges it later" in resp.checks[4].message
    # One endpoint per registry: the wrong password is tried on a fresh endpoint for it.
    await endpoints_only.stub.DeleteEndpoint(transfer_pb2.DeleteEndpointRequest(name="w"))
    bad = await _check(
        endpoints_only, name="w2", url=token_registry.url, username="writer", secret="nope",
    )
    assert _results(bad) == [OK, SKIPPED, FAILED, SKIPPED, SKIPPED]
    assert "credentials rejected by the registry" in bad.checks[2].message


async def test_unreachable_url(endpoints_only: Served) -> None:
    resp = await _check(endpoints_only, name="gone", url=f"http://127.0.0.1:{free_port()}")
    assert _results(resp) == [FAILED, SKIPPED, SKIPPED, SKIPPED, SKIPPED]
    assert "cannot reach" in resp.checks[0].message
    assert not resp.ok


async def test_anonymous_http_without_push_check(
    endpoints_only: Served, registry: RegistryProcess
) -> None:
    resp = await _check(endpoints_only, push=False, name="dev", url=registry.url)
    assert _results(resp) == [OK, SKIPPED, OK, OK]
    assert "plain HTTP" in resp.checks[1].message
    assert resp.ok


async def test_unknown_endpoint_and_bad_repository(endpoints_only: Served) -> None:
    with pytest.raises(aio.AioRpcError) as info:
        await endpoints_only.stub.TestConnection(
            transfer_pb2.TestConnectionRequest(endpoint="nope", repository="a/b")
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(aio.AioRpcError) as info:
        await endpoints_only.stub.TestConnection(
            transfer_pb2.TestConnectionRequest(endpoint="nope", repository="Bad Repo")
        )
    code, fields, _ = rpc_details(info.value)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and fields[0][0] == "repository"
