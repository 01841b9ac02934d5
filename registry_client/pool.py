"""Per-registry state shared by every client of a process: limits, pauses, quota, tokens.

A `RegistryConfig` with `shared_limits=True` (what `EndpointStore.config_for` builds) makes
its transport use the one `RegistryShared` of its registry (scheme://host:port): one
semaphore (`max_concurrency`), one token bucket (`requests_per_second`), one 429 pause, one
quota window and one token cache for all jobs, polls and scans of the process. The clients
themselves stay short-lived: each has its own HTTP session, closed by its `async with`, so no
caller can close the shared state and no session outlives its event loop.

State is kept per event loop (asyncio primitives belong to one loop) and replaced when the
configuration that shapes it changes (URL, credentials, CA, limits): an endpoint update takes
effect at the next request; requests already queued finish under the old limits.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import weakref

from registry_client.auth import Authenticator
from registry_client.config import RegistryConfig
from registry_client.ratelimit import Pause, QuotaWindow, TokenBucket


def fingerprint(cfg: RegistryConfig) -> str:
    """What shapes a registry's shared state; retries and timeouts do not (a connection
    check shortens them for itself)."""
    parts = (
        cfg.key,
        cfg.username,
        cfg.password,
        cfg.ca_pem,
        str(cfg.insecure_skip_verify),
        str(cfg.max_concurrency),
        repr(cfg.requests_per_second),
        repr(cfg.retry_after_cap),
        str(cfg.quota_reserve),
    )
    # Hashed: the password must not sit in a dictionary key that a debugger or repr shows.
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


class RegistryShared:
    """The limits and token cache of one registry, for every transport that talks to it."""

    def __init__(self, cfg: RegistryConfig) -> None:
        self.fingerprint = fingerprint(cfg)
        self.sem = asyncio.Semaphore(cfg.max_concurrency)
        self.bucket = TokenBucket(cfg.requests_per_second)
        self.pause = Pause(cfg.retry_after_cap)
        self.quota = QuotaWindow(cfg.retry_after_cap, cfg.quota_reserve)
        self.auth = Authenticator(cfg)
        self.in_flight = 0  # requests holding a slot, for tests and metrics


class SharedPool:
    """`RegistryShared` per (event loop, registry); thread-safe (stores may run in threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_loop: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[str, RegistryShared]
        ] = weakref.WeakKeyDictionary()

    def get(self, cfg: RegistryConfig) -> RegistryShared:
        """The shared state of `cfg`'s registry in the running loop (new outside a loop)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return RegistryShared(cfg)  # nothing to share with outside an event loop
        fp = fingerprint(cfg)
        with self._lock:
            states = self._by_loop.setdefault(loop, {})
            st = states.get(cfg.key)
            if st is None or st.fingerprint != fp:
                st = states[cfg.key] = RegistryShared(cfg)
            return st

    def forget(self, cfg: RegistryConfig) -> None:
        """Drop the registry's state in every loop (its endpoint was deleted)."""
        with self._lock:
            for states in self._by_loop.values():
                states.pop(cfg.key, None)

    def peek(self, cfg: RegistryConfig) -> RegistryShared | None:
        """The state of the registry in the running loop, if any (for tests and metrics)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            return self._by_loop.get(loop, {}).get(cfg.key)


POOL = SharedPool()
