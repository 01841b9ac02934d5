"""Copies between registries with htpasswd+TLS, token auth and anonymous access."""

from __future__ import annotations

import pytest

from registry_client import errors
from registry_testkit.registry import RegistryProcess
from tests.support.images import ImageBuilder, inspect_raw, push
from transfer_service.engine import CopyEngine, CopyRequest

pytestmark = pytest.mark.registry


async def test_anonymous_to_tls_htpasswd_to_token(
    registry: RegistryProcess,
    tls_registry: RegistryProcess,
    token_registry: RegistryProcess,
    images: ImageBuilder,
    engine: CopyEngine,
    clients,
) -> None:
    img = images.index("v1", platforms=["linux/amd64", "linux/arm64/v8"], layers=[50_000])
    push(img, registry, "pub/app")
    await engine.copy(
        CopyRequest(
            src=clients(registry),
            src_repo="pub/app",
            src_ref="v1",
            dst=clients(tls_registry, "alice"),
            dst_repo="sec/app",
            dst_tag="v1",
        )
    )
    assert inspect_raw(tls_registry, "sec/app", "v1", user="bob") == img.manifest
    r = await engine.copy(
        CopyRequest(
            src=clients(tls_registry, "bob"),
            src_repo="sec/app",
            src_ref="v1",
            dst=clients(token_registry, "writer"),
            dst_repo="tok/app",
            dst_tag="v1",
        )
    )
    assert r.digest == img.digest
    assert inspect_raw(token_registry, "tok/app", "v1", user="reader") == img.manifest
    # Within the token registry: a promotion mounts (pull on source + push on target scopes).
    r = await engine.copy(
        CopyRequest(
            src=clients(token_registry, "writer"),
            src_repo="tok/app",
            src_ref="v1",
            dst=clients(token_registry, "writer"),
            dst_repo="tok/prod",
            dst_tag="v1",
        )
    )
    assert r.progress.blobs_mounted == r.progress.blobs_total
    assert inspect_raw(token_registry, "tok/prod", "v1", user="reader") == img.manifest


async def test_read_only_user_cannot_be_a_destination(
    registry: RegistryProcess,
    token_registry: RegistryProcess,
    images: ImageBuilder,
    engine: CopyEngine,
    clients,
) -> None:
    img = images.image("v1")
    push(img, registry, "pub/app")
    with pytest.raises(errors.PermissionDenied):
        await engine.copy(
            CopyRequest(
                src=clients(registry),
                src_repo="pub/app",
                src_ref="v1",
                dst=clients(token_registry, "reader"),
                dst_repo="tok/app",
                dst_tag="v1",
            )
        )


async def test_untrusted_tls_destination_fails_typed(
    registry: RegistryProcess,
    tls_registry: RegistryProcess,
    images: ImageBuilder,
    engine: CopyEngine,
    clients,
) -> None:
    img = images.image("v1")
    push(img, registry, "pub/app")
    from registry_client import RegistryClient, RegistryConfig

    untrusted = RegistryClient(
        RegistryConfig(url=tls_registry.url, username="alice", password="alice-secret-1")
    )
    try:
        with pytest.raises(errors.TlsError):
            await engine.copy(
                CopyRequest(
                    src=clients(registry),
                    src_repo="pub/app",
                    src_ref="v1",
                    dst=untrusted,
                    dst_repo="x/app",
                    dst_tag="v1",
                )
            )
    finally:
        await untrusted.close()
