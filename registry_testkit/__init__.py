"""Test kit: real docker-registry processes, a token issuer, a fault proxy and image builders.

Used by tests/support (pytest fixtures), bench/ and the demo. Not part of the shipped services.
"""

from __future__ import annotations

from registry_testkit.faultproxy import FaultProxy
from registry_testkit.images import ImageBuilder, ImageRef, Platform
from registry_testkit.registry import RegistryOptions, RegistryProcess, start_registry
from registry_testkit.token_server import TokenServer, TokenUser

__all__ = [
    "FaultProxy",
    "ImageBuilder",
    "ImageRef",
    "Platform",
    "RegistryOptions",
    "RegistryProcess",
    "TokenServer",
    "TokenUser",
    "start_registry",
]
