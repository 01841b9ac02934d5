"""Per-registry state shared by every client of a process: limits, pauses, quota, tokens,
connections.

A `RegistryConfig` with `shared_limits=True` (what `EndpointStore.config_for` builds) makes
its transport use the one `RegistryShared` of its registry (scheme://host:port): one
semaphore (`max_concurrency`), one token bucket (`requests_per_second`), one 429 pause, one
quota window, one token cache and one HTTP session (its pool of kept-alive connections) for
all jobs, polls and scans of the process. Clients stay short-lived; closing one only drops
its hold on the shared state. A retired state's session closes once no client holds it, and
every session of a loop closes when the loop's tasks are cancelled at its end.

State is kept per event loop (asyncio primitives belong to one loop) and replaced when the
configuration that shapes it changes (URL, credentials, CA, limits): an endpoint update takes
effect at the next request; requests already queued finish under the old limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ssl
import threading
import weakref

import aiohttp

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
        self._session: aiohttp.ClientSession | None = None
        self._holders = 0
        self._retired = False
        self.sessions_opened = 0  # for tests: one per registry, not one per client

    def session(self, cfg: RegistryConfig, ssl_ctx: ssl.SSLContext | bool) -> aiohttp.ClientSession:
        """The registry's HTTP session (made on first use, in the running loop)."""
        if self._session is None or self._session.closed:
            self._session = new_session(cfg, ssl_ctx)
            self.sessions_opened += 1
        return self._session

    def hold(self) -> None:
        self._holders += 1

    async def release(self) -> None:
        self._holders -= 1
        if self._retired and self._holders <= 0:
            await self.aclose()

    async def retire(self) -> None:
        """Replaced or forgotten: close the session once the last client lets go."""
        self._retired = True
        if self._holders <= 0:
            await self.aclose()

    async def aclose(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()


def new_session(cfg: RegistryConfig, ssl_ctx: ssl.SSLContext | bool) -> aiohttp.ClientSession:
    """An HTTP session for one registry (timeouts are set per request by the transport)."""
    connector = aiohttp.TCPConnector(ssl=ssl_ctx, limit=max(cfg.max_concurrency * 2, 16))
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(
            total=None, connect=cfg.connect_timeout, sock_read=cfg.read_timeout
        ),
        headers={"User-Agent": cfg.user_agent},
        auto_decompress=False,
        # Blob bodies arrive in bigger pieces: fewer reads, pauses and wake-ups.
        read_bufsize=1 << 20,
    )


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
            states = self._by_loop.get(loop)
            if states is None:
                states = self._by_loop[loop] = {}
                # Closes this loop's sessions when asyncio.run cancels what is left at its end.
                _keep(loop.create_task(_close_at_end(states), name="registry-sessions"))
            st = states.get(cfg.key)
            if st is None or st.fingerprint != fp:
                old, st = st, RegistryShared(cfg)
                states[cfg.key] = st
                if old is not None:
                    _keep(loop.create_task(old.retire()))
            return st

    def forget(self, cfg: RegistryConfig) -> None:
        """Drop the registry's state in every loop (its endpoint was deleted)."""
        with self._lock:
            for loop, states in list(self._by_loop.items()):
                old = states.pop(cfg.key, None)
                if old is not None and not loop.is_closed():
                    loop.call_soon_threadsafe(_retire_soon, old)

    def peek(self, cfg: RegistryConfig) -> RegistryShared | None:
        """The state of the registry in the running loop, if any (for tests and metrics)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            return self._by_loop.get(loop, {}).get(cfg.key)


# Strong references to the pool's own tasks (the loop keeps only weak ones).
_TASKS: set[asyncio.Future[None]] = set()


def _keep(task: asyncio.Future[None]) -> None:
    _TASKS.add(task)
    task.add_done_callback(_TASKS.discard)


def _retire_soon(state: RegistryShared) -> None:
    _keep(asyncio.ensure_future(state.retire()))


async def _close_at_end(states: dict[str, RegistryShared]) -> None:
    try:
        await asyncio.Event().wait()
    finally:
        for st in list(states.values()):
            with contextlib.suppress(Exception):
                await st.aclose()


POOL = SharedPool()
