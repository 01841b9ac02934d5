"""The engine's global limit on concurrent blob transfers holds against a real registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry_testkit.registry import RegistryProcess
from tests.support.images import ImageBuilder, inspect_raw, push
from transfer_service.engine import CopyEngine, CopyRequest

pytestmark = pytest.mark.registry


@pytest.mark.parametrize("limit", [1, 3])
async def test_blob_transfers_never_exceed_the_global_limit(
    registry: RegistryProcess,
    registry2: RegistryProcess,
    images: ImageBuilder,
    clients,
    fault_proxy,
    tmp_path: Path,
    limit: int,
) -> None:
    img = images.image("v1", layers=[4096 + i for i in range(10)])
    push(img, registry, "lim/app")
    src = fault_proxy(registry.url)
    # Every blob download takes a while, so downloads that are allowed to overlap do.
    src.delay(r"/blobs/sha256:", 0.15, method="GET")
    engine = CopyEngine(tmp_path / "spool", max_concurrent_blobs=limit, backoff_base=0.01)
    await engine.copy(
        CopyRequest(
            src=clients(src.url, max_concurrency=32),
            src_repo="lim/app",
            src_ref="v1",
            dst=clients(registry2, max_concurrency=32),
            dst_repo="lim/app",
            dst_tag="v1",
        )
    )
    assert inspect_raw(registry2, "lim/app", "v1") == inspect_raw(registry, "lim/app", "v1")
    blob_gets = src.requests("GET", r"/blobs/sha256:")
    assert len(blob_gets) == 11  # ten layers and the config, each fetched once
    assert src.max_in_flight <= limit
    if limit > 1:
        assert src.max_in_flight > 1  # the limit is what bounds them, not a serial engine
