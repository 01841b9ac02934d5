"""registry_client.images: the one definition of platform strings and image size."""

from __future__ import annotations

from registry_client.images import (
    image_size,
    is_attestation_entry,
    platform_matches,
    platform_string,
)


def test_platform_string() -> None:
    assert platform_string({"os": "linux", "architecture": "amd64"}) == "linux/amd64"
    assert platform_string({"os": "linux", "architecture": "arm64", "variant": "v8"}) == (
        "linux/arm64/v8"
    )
    assert platform_string({"architecture": "amd64"}) == ""
    assert platform_string(None) == ""


def test_platform_matches_variants() -> None:
    assert platform_matches("linux/arm64/v8", ["linux/arm64"])
    assert platform_matches("linux/arm64/v8", ["linux/amd64", "linux/arm64/v8"])
    assert not platform_matches("linux/arm64/v7", ["linux/arm64/v8"])
    assert not platform_matches("linux/amd64", ["windows/amd64"])


def test_image_size_counts_config_and_layers_not_the_manifest() -> None:
    manifest = {"config": {"size": 100}, "layers": [{"size": 1000}, {"size": 24}]}
    assert image_size(manifest) == 1124
    assert image_size({}) == 0


def test_attestation_entries() -> None:
    assert is_attestation_entry({"platform": {"os": "unknown", "architecture": "unknown"}})
    assert not is_attestation_entry({"platform": {"os": "linux", "architecture": "amd64"}})
