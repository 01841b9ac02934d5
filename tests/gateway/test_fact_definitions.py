"""One definition of each image fact: the gateway and the scanner read the same image the
same way (size counts the config and layers, not manifest bytes; one platform spelling)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from mirror.v1 import common_pb2

from gateway.facts import FactGatherer, ImageRef
from registry_client import RegistryClient, RegistryConfig
from registry_testkit.images import ImageBuilder, push
from registry_testkit.registry import RegistryProcess
from scanner.scan import collect_facts

pytestmark = pytest.mark.registry


class _Resolver:
    def __init__(self, url: str) -> None:
        self.url = url

    def client_for(self, name: str) -> Any:
        return RegistryClient(RegistryConfig(url=self.url))


async def test_size_and_platform_are_the_same_from_gateway_and_scanner(
    registry: RegistryProcess, images: ImageBuilder
) -> None:
    img = images.image("1.0", layers=(3000, 5000), platform="linux/arm64/v8")
    push(img, registry, "team/app", "1.0")
    manifest = json.loads(img.manifest)
    expected = manifest["config"]["size"] + sum(la["size"] for la in manifest["layers"])

    gathered = await FactGatherer(_Resolver(registry.url), None).gather(
        ImageRef("dev", "team/app", "1.0", img.digest), {common_pb2.FACT_KIND_MANIFEST}
    )
    async with RegistryClient(RegistryConfig(url=registry.url)) as rc:
        scanned = await collect_facts(rc, "team/app", "1.0")

    assert gathered.facts.size_bytes == scanned.size == expected
    assert list(gathered.facts.platforms) == scanned.platforms == ["linux/arm64/v8"]
