"""Connection settings of one registry."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass(frozen=True)
class RegistryConfig:
    """How to reach and authenticate to one registry.

    `password` may be a password or an access token; it is never logged (repr hides it).
    """

    url: str
    username: str = ""
    password: str = field(default="", repr=False)
    ca_pem: str = field(default="", repr=False)
    insecure_skip_verify: bool = False
    max_concurrency: int = 8
    requests_per_second: float = 0.0
    max_attempts: int = 5
    backoff_base: float = 0.2
    backoff_cap: float = 10.0
    # Longest Retry-After we honour; a longer one is clamped (a registry may ask for hours).
    retry_after_cap: float = 60.0
    connect_timeout: float = 15.0
    # Seconds without any bytes before a read is abandoned (and retried).
    read_timeout: float = 120.0
    user_agent: str = "image-mirror/0.1"

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"registry url must be http(s)://host[:port], got {self.url!r}")
        if self.max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")

    @property
    def base_url(self) -> str:
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def key(self) -> str:
        """Identity of the registry (scheme://host:port), for caches and blob-location maps."""
        return self.base_url.lower()
