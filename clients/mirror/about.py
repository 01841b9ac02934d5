"""What is installed: the one place that reads image-mirror's version (mirrorctl, the
services and the console all print it for --version)."""

from __future__ import annotations

from importlib import metadata


def version() -> str:
    """The installed image-mirror version ('unknown' when run from a bare checkout)."""
    try:
        return metadata.version("image-mirror")
    except metadata.PackageNotFoundError:
        return "unknown"
