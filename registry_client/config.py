"""Connection settings of one registry."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import metadata
from urllib.parse import urlsplit

from registry_client.excerpt import strip_userinfo


def _version() -> str:
    try:
        return metadata.version("image-mirror")
    except metadata.PackageNotFoundError:  # running from a bare checkout
        return "0"


# Every request we make says who we are, so our own pushes can be told apart in registry
# events (the gateway must not mirror what it just pushed as if a developer had).
USER_AGENT = f"image-mirror/{_version()}"


@dataclass(frozen=True)
class RegistryConfig:
    """How to reach and authenticate to one registry.

    `password` may be a password or an access token; it is never logged (repr hides it), and
    only sent to this registry's own origin (scheme, host, port) or to a token realm it names
    that is https or on the same host. Userinfo in `url` is ignored (never sent, never shown).
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
    # Longest Retry-After we wait for; a longer one fails the attempt at once
    # (errors.RetryAfterTooLong, carrying the wait asked for) so a scheduler can come back.
    retry_after_cap: float = 60.0
    connect_timeout: float = 15.0
    # Seconds to wait for the answer to a request that makes the registry work (PUT, PATCH,
    # POST, DELETE: a commit may hash a large blob).
    read_timeout: float = 120.0
    # Seconds without any bytes while reading an answer to GET/HEAD (a blob body stalled
    # mid-way) before the read is cut; the copy engine resumes, but not indefinitely.
    idle_timeout: float = 30.0
    user_agent: str = USER_AGENT
    # Share limits, 429 pauses, the quota window and tokens with every other client of this
    # registry in the process (registry_client.pool); off: this client has its own.
    shared_limits: bool = False
    # Requests counting against an announced pull quota (RateLimit-Remaining) stop when this
    # many are left, so that other users of the account keep some.
    quota_reserve: int = 0

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"registry url must be http(s)://host[:port], got {strip_userinfo(self.url)!r}"
            )
        if self.max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        if self.quota_reserve < 0:
            raise ValueError("quota_reserve must be at least 0")
        if self.idle_timeout <= 0:
            raise ValueError("idle_timeout must be positive")

    @property
    def base_url(self) -> str:
        """scheme://host[:port] of the registry, without any userinfo."""
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"

    @property
    def key(self) -> str:
        """Identity of the registry (scheme://host:port), for caches and blob-location maps."""
        return self.base_url.lower()
