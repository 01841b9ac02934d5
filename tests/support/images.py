"""Image building fixtures: OCI layouts built on disk, pushed and inspected with skopeo."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry_testkit.images import (
    ImageBuilder,
    ImageRef,
    LayerSpec,
    Platform,
    digest_of,
    inspect_raw,
    list_tags,
    push,
    skopeo_copy,
)

__all__ = [
    "ImageBuilder",
    "ImageRef",
    "LayerSpec",
    "Platform",
    "digest_of",
    "inspect_raw",
    "list_tags",
    "push",
    "skopeo_copy",
]


@pytest.fixture
def images(tmp_path: Path) -> ImageBuilder:
    """Builds images under tmp_path (`.image(...)`, `.index(...)`); push with `push(...)`."""
    return ImageBuilder(tmp_path / "images")
