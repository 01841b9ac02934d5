"""What image manifests and configs say, defined once: platform strings and image size.

The engine (platform selection), the gateway (image facts) and the scanner (its facts) read
these the same way, so a rule reading `size` or `platform` gets one answer whichever service
gathered the fact.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def platform_string(p: Mapping[str, Any] | None) -> str:
    """`os/architecture[/variant]` of an index entry's `platform` or an image config;
    "" when either os or architecture is missing."""
    p = p or {}
    os_, arch = str(p.get("os") or ""), str(p.get("architecture") or "")
    if not (os_ and arch):
        return ""
    variant = str(p.get("variant") or "")
    return f"{os_}/{arch}/{variant}" if variant else f"{os_}/{arch}"


def is_attestation_entry(entry: Mapping[str, Any]) -> bool:
    """An index entry for build attestations (BuildKit marks them os "unknown"), not an image."""
    return str((entry.get("platform") or {}).get("os", "")) == "unknown"


def platform_matches(have: str, wanted: Iterable[str]) -> bool:
    """Whether platform `have` is one of `wanted`: "linux/arm64" matches any variant of it,
    "linux/arm64/v8" only that variant."""
    got = have.split("/")
    for w in wanted:
        parts = w.split("/")
        if parts[:2] == got[:2] and (len(parts) == 2 or parts[2:] == got[2:]):
            return True
    return False


def image_size(manifest: Mapping[str, Any]) -> int:
    """Bytes of an image: its config blob and its layers (compressed, as stored); manifests
    themselves are not counted. For an index, sum this over the images it selects."""
    config = manifest.get("config") or {}
    layers = manifest.get("layers") or []
    return int(config.get("size", 0) or 0) + sum(int(la.get("size", 0) or 0) for la in layers)
