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
from transfer_service.engine.models import CopiedReferrer, CopyProgress, CopyRequest, CopyResult
from transfer_service.engine.referrers import CHOICES as REFERRER_CHOICES

__all__ = [
    "REFERRER_CHOICES",
    "BlobLocations",
    "CopiedReferrer",
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
