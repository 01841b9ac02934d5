"""The copy engine: images between registries, digests preserved, bounded memory and disk."""

from __future__ import annotations

from transfer_service.engine.engine import CopyEngine
from transfer_service.engine.errors import (
    CopyError,
    DescriptorMismatch,
    InvalidReference,
    PlatformFilterError,
    TagExists,
    UnsupportedManifest,
)
from transfer_service.engine.locations import BlobLocations
from transfer_service.engine.models import CopyProgress, CopyRequest, CopyResult

__all__ = [
    "BlobLocations",
    "CopyEngine",
    "CopyError",
    "CopyProgress",
    "CopyRequest",
    "CopyResult",
    "DescriptorMismatch",
    "InvalidReference",
    "PlatformFilterError",
    "TagExists",
    "UnsupportedManifest",
]
