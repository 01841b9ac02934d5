"""EndpointResolver: another service pulls through a client built from the transfer service's
store (read-only, same key), never seeing the secret in an RPC."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry_testkit.images import ImageBuilder, push
from registry_testkit.registry import RegistryProcess
from transfer_service.endpoints import EndpointRecord, EndpointResolver, EndpointStore
from transfer_service.schema import open_database
from transfer_service.secrets import load_secret_box

pytestmark = pytest.mark.registry


async def test_read_only_store_builds_a_working_client(
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

    # What a scanner in another process does: same data folder (read-only) and key file.
    resolver: EndpointResolver = EndpointStore.open_readonly(
        data, load_secret_box(data / "secret.key", env={})
    )
    async with resolver.client_for("qa") as rc:
        m = await rc.get_manifest("team/app", "1.0")
    assert m.digest == img.digest
    assert tls_registry.password_of("alice") not in repr(rc.cfg)

    reader = EndpointStore.open_readonly(data, load_secret_box(data / "secret.key", env={}))
    with pytest.raises(PermissionError, match="read-only"):
        reader.create(EndpointRecord(name="x", url="http://127.0.0.1:1"))
    with pytest.raises(PermissionError):
        reader.delete("qa")
    assert owner.exists("qa")
