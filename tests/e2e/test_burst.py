"""Fifty tags pushed at once: every matching tag mirrored exactly once, nothing lost."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from mirror.v1 import gateway_pb2

from registry_testkit.images import ImageBuilder, push
from stack.process import StackProcess
from tests.e2e.conftest import Clients, dev_and_qa
from tests.e2e.helpers import tags_of
from tests.support.registry import RegistryFactory

pytestmark = pytest.mark.registry

Run = gateway_pb2.Run
N = 50


def test_fifty_tags_at_once(
    stack: StackProcess, clients: Clients, registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    dev, qa = dev_and_qa(clients, registry_factory, stack)
    pol = clients.add_policy("burst", "dev/app", 'tag endswith "stable"', "qa", "qa/app")
    image = ImageBuilder(tmp_path / "img").image("seed")
    tags = [f"{i}-stable" if i % 2 == 0 else f"{i}-dev" for i in range(N)]
    # docker-registry 2.8.2 races when many clients upload the same new blob into one
    # repository at once (DIGEST_INVALID / MANIFEST_BLOB_UNKNOWN), so the first push brings the
    # blobs and the other 49 tags then arrive at once, as tag pushes of a CI fan-out do.
    push(image, dev, "dev/app", tags[0])
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda t: push(image, dev, "dev/app", t), tags[1:]))

    runs = clients.wait_runs_final(pol.id, N, timeout=120)
    assert len(runs) == N
    by_tag: dict[str, list[int]] = {}
    for r in runs:
        by_tag.setdefault(r.source.reference, []).append(r.state)
    assert sorted(by_tag) == sorted(tags)  # one run per tag, none lost
    stable = sorted(t for t in tags if t.endswith("stable"))
    assert all(by_tag[t] == [Run.STATE_SUCCEEDED] for t in stable)
    assert all(by_tag[t] == [Run.STATE_NOT_MATCHED] for t in tags if t.endswith("dev"))
    transfers = clients.transfers("qa/app")
    assert sorted(t.destination.tag for t in transfers) == stable  # each exactly once
    assert tags_of(qa, "qa/app") == stable
