"""The one OCI distribution client: transport (limits, retries), auth, TLS, typed errors."""

from __future__ import annotations

from registry_client import errors, mediatypes
from registry_client.client import (
    BlobReader,
    Manifest,
    ManifestDescriptor,
    RegistryClient,
    Upload,
    is_digest,
    sha256_digest,
)
from registry_client.config import USER_AGENT, RegistryConfig
from registry_client.referrers import Referrer

__all__ = [
    "USER_AGENT",
    "BlobReader",
    "Manifest",
    "ManifestDescriptor",
    "Referrer",
    "RegistryClient",
    "RegistryConfig",
    "Upload",
    "errors",
    "is_digest",
    "mediatypes",
    "sha256_digest",
]
