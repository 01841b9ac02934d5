"""Console settings: where the services are and how long a sign-in lasts."""

from __future__ import annotations

from dataclasses import dataclass, field

from mirror.channel import TlsOptions


@dataclass
class ConsoleConfig:
    # The gRPC address of the services (one address for the embedded stack).
    address: str = "127.0.0.1:50051"
    # Per-service addresses for a split deployment ({"policies": "host:port", ...}).
    addresses: dict[str, str] | None = None
    tls: bool | TlsOptions = False
    # A session ends after this long without a request, and at the latest after max_s.
    idle_timeout_s: float = 30 * 60
    max_age_s: float = 8 * 3600
    max_sessions: int = 1000
    # Failed sign-ins allowed per client address within the window before it must wait.
    sign_in_attempts: int = 10
    sign_in_window_s: float = 300.0
    # Set the cookie's Secure flag (serve the console behind TLS).
    secure_cookie: bool = False
    # Where registries send push notifications (the gateway's HTTP port), shown on a
    # registry's page: "" for the console's own origin (mounted on the stack), None: not shown.
    events_base: str | None = None
    # Seconds between refreshes of the live runs table (server-sent events).
    live_interval_s: float = 1.0
    # Runs on one page of a policy's history.
    runs_per_page: int = 50
    # Repositories on one page of a registry's catalog.
    repositories_per_page: int = 100
    # Deadline of one SDK call made for a page.
    call_timeout_s: float = 30.0
    extra: dict[str, str] = field(default_factory=dict)
