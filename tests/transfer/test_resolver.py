"""EndpointResolver: the stack's scanner and gateway pull through clients the transfer
service's store builds (credentials and CA inside, the secret in no repr); split services
read through the transfer service's API instead (test_registry_reads)."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry_client.resolver import EndpointResolver
from registry_testkit.images import ImageBuilder, push
from registry_testkit.registry import RegistryProcess
from transfer_service.endpoints import EndpointRecord, EndpointStore
from transfer_service.schema import open_database
from transfer_service.secrets import load_secret_box

pytestmark = pytest.mark.registry


async def test_the_store_is_a_resolver_whose_clients_work(
    tmp_path: Path, tls_registry: RegistryProcess, images: ImageBuilder
) -> None:
    img = images.image("1.0")
    push(img, tls_registry, "team/app", user="alice")
    data = tmp_path / "transfer-data"
    owner = EndpointStore(open_database(data), load_secret_box(data / "secret.key", env={}))
    owner.create(
        EndpointRecord(
            name="qa", url=tls_registry.url, username="alice",
            secret=tls_registry.password_of("alice"), ca_pem=tls_registry.ca_pem,
        )
    )

    # What the stack's scanner and gateway receive in-process: the store as their resolver.
    resolver: EndpointResolver = owner
    async with resolver.client_for("qa") as rc:
        m = await rc.get_manifest("team/app", "1.0")
    assert m.digest == img.digest
    assert tls_registry.password_of("alice") not in repr(rc.cfg)
    assert tls_registry.password_of("alice") not in repr(owner.get("qa"))
