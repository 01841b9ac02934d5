"""Authentication and TLS of registry_client against real registries (htpasswd+TLS, tokens)."""

from __future__ import annotations

import logging

import pytest

from registry_client import RegistryClient, RegistryConfig, errors, sha256_digest
from registry_client.auth import merge_scopes, parse_www_authenticate
from registry_testkit.registry import RegistryProcess
from registry_testkit.token_server import TokenServer
from tests.support.images import ImageBuilder, push

pytestmark = pytest.mark.registry


def test_challenge_parser_handles_ports_quotes_and_several_scopes() -> None:
    header = (
        'Bearer realm="https://auth.example.com:8443/token",service="reg.example:5000",'
        'scope="repository:reg.example:5000/team/app:pull,push repository:other/x:pull",'
        'error="insufficient_scope", Basic realm="say \\"hi\\", friend"'
    )
    bearer, basic = parse_www_authenticate(header)
    assert bearer.scheme == "bearer"
    assert bearer.realm == "https://auth.example.com:8443/token"
    assert bearer.service == "reg.example:5000"
    assert bearer.scopes == [
        "repository:reg.example:5000/team/app:pull,push",
        "repository:other/x:pull",
    ]
    assert bearer.error == "insufficient_scope"
    assert basic.scheme == "basic" and basic.realm == 'say "hi", friend'
    assert parse_www_authenticate("Basic realm=plain")[0].realm == "plain"


def test_scope_merge_keeps_host_port_names_whole() -> None:
    merged = merge_scopes(
        ["repository:h:5000/a:pull", "repository:h:5000/a:push", "registry:catalog:*"]
    )
    assert merged == ("registry:catalog:*", "repository:h:5000/a:pull,push")


async def test_htpasswd_over_tls_with_ca(
    tls_registry: RegistryProcess, images: ImageBuilder
) -> None:
    img = images.image("v1")
    push(img, tls_registry, "sec/app", user="alice")
    async with RegistryClient(tls_registry.client_config("bob")) as rc:
        await rc.ping()
        m = await rc.get_manifest("sec/app", "v1")
        assert m.digest == img.digest


async def test_tls_unknown_ca_fails_and_skip_verify_connects(tls_registry: RegistryProcess) -> None:
    cfg = RegistryConfig(url=tls_registry.url, username="alice", password="alice-secret-1")
    async with RegistryClient(cfg) as rc:
        with pytest.raises(errors.TlsError):
            await rc.ping()
    cfg = RegistryConfig(
        url=tls_registry.url, username="alice", password="alice-secret-1", insecure_skip_verify=True
    )
    async with RegistryClient(cfg) as rc:
        await rc.ping()


async def test_basic_wrong_password_and_none(tls_registry: RegistryProcess, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    cfg = RegistryConfig(
        url=tls_registry.url,
        username="alice",
        password="wrong-pass-xyz",
        ca_pem=tls_registry.ca_pem,
    )
    async with RegistryClient(cfg) as rc:
        with pytest.raises(errors.AuthenticationError):
            await rc.ping()
    async with RegistryClient(
        RegistryConfig(url=tls_registry.url, ca_pem=tls_registry.ca_pem)
    ) as rc:
        with pytest.raises(errors.AuthenticationError):
            await rc.ping()
    assert "wrong-pass-xyz" not in caplog.text
    assert "wrong-pass-xyz" not in repr(cfg)


async def test_token_auth_read_write_and_read_only(
    token_registry: RegistryProcess, token_server: TokenServer, images: ImageBuilder, caplog
) -> None:
    caplog.set_level(logging.DEBUG)
    img = images.image("v1", layers=[5000])
    push(img, token_registry, "tok/app", user="writer")
    data = b"written by the writer" * 100
    async with RegistryClient(token_registry.client_config("writer")) as rc:
        await rc.ping()
        await rc.upload_blob("tok/new", sha256_digest(data), data)
        # Mount asks for two scopes in one challenge; the token must carry both.
        assert await rc.mount_blob("tok/new", img.blobs[1].digest, "tok/app") is True
        fetches = rc.transport.auth.token_fetches
        for _ in range(5):
            assert await rc.blob_size("tok/new", sha256_digest(data)) == len(data)
        # Cached per scope set: one more fetch at most for the new (pull) scope.
        assert rc.transport.auth.token_fetches <= fetches + 1
    assert any(
        set(s) >= {"repository:tok/app:pull", "repository:tok/new:pull,push"}
        for s in token_server.scopes_asked
    )
    async with RegistryClient(token_registry.client_config("reader")) as rc:
        m = await rc.get_manifest("tok/app", "v1")
        assert m.digest == img.digest
        with pytest.raises(errors.PermissionDenied):
            await rc.upload_blob("tok/app", sha256_digest(data), data)
    bad = RegistryConfig(url=token_registry.url, username="writer", password="nope-nope")
    async with RegistryClient(bad) as rc:
        with pytest.raises(errors.AuthenticationError):
            await rc.get_manifest("tok/app", "v1")
    for secret in ("writer-secret-1", "reader-secret-2", "nope-nope"):
        assert secret not in caplog.text
    assert "eyJ" not in caplog.text  # no JWT in the logs


async def test_token_get_fallback_when_post_form_absent(
    token_registry: RegistryProcess, token_server: TokenServer
) -> None:
    token_server.post_enabled = False
    async with RegistryClient(token_registry.client_config("writer")) as rc:
        await rc.ping()
        assert await rc.blob_size("tok/x", "sha256:" + "1" * 64) is None
    assert token_server.requests["POST"] == 1  # tried once, then GET only
    assert token_server.requests["GET"] >= 2


async def test_token_post_form_used_when_available(
    token_registry: RegistryProcess, token_server: TokenServer
) -> None:
    async with RegistryClient(token_registry.client_config("writer")) as rc:
        await rc.ping()
        assert await rc.blob_size("tok/x", "sha256:" + "1" * 64) is None
    assert token_server.requests["POST"] >= 2 and token_server.requests["GET"] == 0


async def test_expired_token_is_refreshed_on_401(
    token_registry: RegistryProcess, token_server: TokenServer
) -> None:
    async with RegistryClient(token_registry.client_config("writer")) as rc:
        assert await rc.blob_size("tok/x", "sha256:" + "2" * 64) is None
        # Make the cached token unusable (as if revoked) while the cache still trusts it.
        for tok in rc.transport.auth._tokens.values():
            tok.value = tok.value[:-4] + "AAAA"
        before = rc.transport.auth.token_fetches
        assert await rc.blob_size("tok/x", "sha256:" + "2" * 64) is None
        assert rc.transport.auth.token_fetches == before + 1
