"""HTTP transport of one registry: session, TLS, auth round-trips, limits and retries.

Retries what `servicekit.retry` calls retryable (408, 429, 5xx, connection errors) with its
backoff, honouring Retry-After up to `retry_after_cap` (a longer wait fails at once with
RetryAfterTooLong); never other 4xx. A 401 from the registry's own origin is answered once by
(re)learning the challenge and fetching a fresh token; a 401 from anywhere else (a redirect, a
Location on another host) is an error and never gets credentials. The concurrency slot is held
until the response body has been consumed, so a streaming download counts as one request for
its whole life. GET/HEAD answers are cut after `idle_timeout` seconds without a byte, other
answers after `read_timeout`; such a stall (errors.Stalled) is not retried here.

Limits, pauses, the quota window and tokens live in a `pool.RegistryShared`: the process-wide
one of the registry when `cfg.shared_limits`, else this transport's own. A 429 (and a 503 with
Retry-After) pauses every request that uses it, not only the one that got the answer; requests
that count against an announced pull quota (manifest GETs) wait while the quota is at its
reserve (see ratelimit.QuotaWindow).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import ssl
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Collection, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Union
from urllib.parse import urlsplit

import aiohttp

from registry_client.bodies import read_limited
from registry_client.config import RegistryConfig
from registry_client.errors import (
    AuthenticationError,
    ConnectError,
    PermissionDenied,
    RegistryError,
    RetryAfterTooLong,
    Stalled,
    TlsError,
    TooManyRequests,
    error_for,
)
from registry_client.excerpt import strip_userinfo
from registry_client.pool import POOL, RegistryShared, new_session
from registry_client.ratelimit import counts_against_quota, read_quota
from servicekit.retry import Backoff, retryable_status

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset(s for s in range(400, 600) if retryable_status(s))
# Methods whose answers are read under the idle timeout (the others may make the registry
# work before it answers: a commit hashes the blob).
_IDLE_METHODS = frozenset({"GET", "HEAD"})
# A request body: bytes (replayable), a factory of streams (replayable), or a one-shot stream.
Body = Union[bytes, Callable[[], AsyncIterable[bytes]], AsyncIterable[bytes], None]  # noqa: UP007


def make_ssl(cfg: RegistryConfig) -> ssl.SSLContext | bool:
    if not cfg.base_url.startswith("https"):
        return True
    if cfg.insecure_skip_verify:
        return False
    if cfg.ca_pem:
        try:
            return ssl.create_default_context(cadata=cfg.ca_pem)
        except ssl.SSLError as e:
            raise TlsError(0, "", f"the CA PEM is not a valid certificate: {e.reason}") from e
    return ssl.create_default_context()


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class Transport:
    """Sends requests to one registry with auth, limits and retries."""

    def __init__(self, cfg: RegistryConfig) -> None:
        self.cfg = cfg
        self.shared = POOL.get(cfg) if cfg.shared_limits else RegistryShared(cfg)
        self.auth = self.shared.auth
        self._ssl = make_ssl(cfg)
        self._session: aiohttp.ClientSession | None = None
        self._holding = False
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=cfg.connect_timeout, sock_read=cfg.read_timeout
        )
        self._policy = Backoff(cfg.backoff_base, cfg.backoff_cap)
        self._idle = aiohttp.ClientTimeout(
            total=None, connect=cfg.connect_timeout, sock_read=cfg.idle_timeout
        )
        self.retries = 0  # retried requests, for tests and metrics

    @property
    def session(self) -> aiohttp.ClientSession:
        if self.cfg.shared_limits:
            if not self._holding:
                self.shared.hold()
                self._holding = True
            return self.shared.session(self.cfg, self._ssl)
        if self._session is None or self._session.closed:
            self._session = new_session(self.cfg, self._ssl)
        return self._session

    async def close(self) -> None:
        """Close this transport's own session, or let go of the registry's shared one."""
        if self._holding:
            self._holding = False
            await self.shared.release()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def url(self, path_or_url: str) -> str:
        if path_or_url.startswith(("http://", "https://")):
            return path_or_url
        return self.cfg.base_url + path_or_url

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return retry_after
        return self._policy.delay(attempt)

    @asynccontextmanager
    async def request(
        self,
        method: str,
        path: str,
        *,
        scopes: Iterable[str] = (),
        ok: Collection[int] = (200,),
        headers: dict[str, str] | None = None,
        params: Any = None,
        data: Body = None,
        retry: bool = True,
        retry_statuses: Collection[int] = RETRY_STATUSES,
        context: str = "",
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Yield the response once its status is in `ok`; raise a typed error otherwise.

        `retry=False`: connection errors are not retried (the request may have reached the
        registry), only the statuses in `retry_statuses`. A one-shot stream body is never
        resent.
        """
        st = _State(
            list(scopes),
            replayable=data is None or isinstance(data, bytes) or callable(data),
            counted=counts_against_quota(method, urlsplit(self.url(path)).path),
        )
        context = context or f"{method} {path}"
        while True:
            try:
                await self._admit(st, context)
            except RegistryError as err:
                err.registry = err.registry or urlsplit(self.cfg.base_url).netloc
                raise
            try:
                outcome = await self._attempt(
                    st,
                    method,
                    self.url(path),
                    headers,
                    params,
                    data,
                    ok,
                    retry,
                    retry_statuses,
                    context,
                )
            except RegistryError as err:
                self._release(st)
                # Callers that talk to two registries (the copy engine) label errors by side.
                err.registry = err.registry or urlsplit(self.cfg.base_url).netloc
                raise
            except BaseException:
                self._release(st)
                raise
            if isinstance(outcome, float):
                self._release(st)
                if outcome > 0:
                    await asyncio.sleep(outcome)
                continue
            try:
                yield outcome
            finally:
                outcome.release()
                self._release(st)
            return

    async def _admit(self, st: _State, context: str) -> None:
        """Wait for the registry's pause, quota, rate and a concurrency slot (then held)."""
        sh = self.shared
        while True:
            await sh.pause.wait()
            if st.counted:
                await sh.quota.wait(context)
            await sh.bucket.acquire()
            await sh.sem.acquire()
            # A 429 or the quota's last answer may have come in while this request queued.
            if sh.pause.remaining() <= 0 and not (st.counted and sh.quota.wait_needed() > 0):
                break
            sh.sem.release()
        if st.counted:
            sh.quota.take()
            st.quota_out = True
        sh.in_flight += 1

    def _release(self, st: _State) -> None:
        sh = self.shared
        self._answered(st)
        sh.in_flight -= 1
        sh.sem.release()

    def _answered(self, st: _State) -> None:
        if st.quota_out:
            st.quota_out = False
            self.shared.quota.done()

    async def _attempt(
        self,
        st: _State,
        method: str,
        url: str,
        headers: dict[str, str] | None,
        params: Any,
        data: Body,
        ok: Collection[int],
        retry: bool,
        retry_statuses: Collection[int],
        context: str,
    ) -> aiohttp.ClientResponse | float:
        """One try: the response to yield, or the seconds to wait before the next try."""
        hdrs = {"User-Agent": self.cfg.user_agent, **(headers or {})}
        own = self.auth.owns(url)
        # Credentials only for the registry's own origin (a Location or Link may point away).
        auth_header = await self.auth.header(self.session, st.scopes) if own else None
        if auth_header:
            hdrs["Authorization"] = auth_header
        body: Any = data() if callable(data) else data
        # Per request: the session may be the registry's, made for another client's timeouts.
        timeout = self._idle if method in _IDLE_METHODS else self._timeout
        try:
            resp = await self.session.request(
                method,
                url,
                headers=hdrs,
                params=params,
                data=body,
                allow_redirects=True,
                timeout=timeout,
            )
        except (aiohttp.ClientSSLError, ssl.SSLError) as e:
            raise TlsError(0, "", f"TLS with {self.cfg.base_url} failed: {e}") from e
        except aiohttp.SocketTimeoutError as e:
            # Connected, but no answer for the read timeout: a hung registry. Not retried
            # here (five more waits would hold the slot for minutes); callers decide.
            waited = self.cfg.idle_timeout if method in _IDLE_METHODS else self.cfg.read_timeout
            raise Stalled(0, "", f"{context}: no answer for {waited:g}s") from e
        except (TimeoutError, aiohttp.ClientConnectionError) as e:
            if not (retry and st.replayable and st.attempt + 1 < self.cfg.max_attempts):
                raise ConnectError(0, "", f"{context}: {type(e).__name__} {e}".strip()) from e
            return self._next_try(st, context, type(e).__name__, None)

        self._answered(st)
        if own and self.auth.owns(str(resp.url)):
            # Docker Hub announces its pull quota on manifest answers, HEADs included.
            self.shared.quota.observe(read_quota(resp.headers))

        if resp.status == 401:
            www = resp.headers.get("WWW-Authenticate", "")
            err_body = await _read_small(resp)
            resp.release()
            if not (own and self.auth.owns(str(resp.url))):
                # Another host asks for credentials (after a redirect, or a foreign Location):
                # it never gets them, and its challenge is not learnt.
                raise AuthenticationError(
                    401,
                    "UNAUTHORIZED",
                    f"{context}: {origin_text(str(resp.url))} asked for credentials; they are"
                    f" only sent to {self.cfg.base_url}",
                )
            if st.auth_rounds >= 1 or not st.replayable or not www:
                raise self._unauthorized(err_body, bool(auth_header))
            st.auth_rounds += 1
            before = self.auth.challenge
            ch = self.auth.learn(www)
            if auth_header and before is not None and before.scheme == ch.scheme:
                if ch.scheme == "basic":
                    raise AuthenticationError(401, "UNAUTHORIZED", "credentials rejected")
                # A cached token was refused (expired or revoked): fetch a fresh one.
                self.auth.invalidate(st.scopes)
            st.scopes = sorted(set(st.scopes) | set(ch.scopes))
            return 0.0

        can_retry = st.replayable and st.attempt + 1 < self.cfg.max_attempts
        if resp.status in retry_statuses and resp.status not in ok:
            wait = retry_after_seconds(resp.headers.get("Retry-After"))
            if resp.status == 429 or wait is not None:
                # Retry-After applies to the client, not to one request: hold every request
                # to this registry (for a bare 429, for this attempt's backoff).
                hold = wait if wait is not None else self._policy.delay(st.attempt)
                if hold <= self.cfg.retry_after_cap and self.shared.pause.remaining() < hold:
                    log.warning(
                        "%s answered %d to %s: every request to it waits %.1fs",
                        self.cfg.base_url, resp.status, context, hold,
                    )
                self.shared.pause.hold(hold)
            if wait is not None and wait > self.cfg.retry_after_cap:
                # Waiting hours would hold a slot with no word said: fail this attempt now
                # and let the caller's scheduler come back (the wait rides on the error).
                err_body = await _read_small(resp)
                resp.release()
                code = error_for(resp.status, err_body).code
                raise RetryAfterTooLong(
                    resp.status,
                    code,
                    f"{context}: the registry asks to retry after {wait:.0f}s (Retry-After),"
                    f" over the {self.cfg.retry_after_cap:.0f}s cap",
                    retry_after=wait,
                )
            if can_retry:
                resp.release()
                return self._next_try(st, context, f"HTTP {resp.status}", wait)

        if resp.status not in ok:
            err_body = await _read_small(resp)
            resp.release()
            err = error_for(resp.status, err_body, context)
            if resp.status == 429 and not isinstance(err, TooManyRequests):
                err = TooManyRequests(err.status, err.code or "TOOMANYREQUESTS", err.message)
            raise err
        return resp

    def _next_try(self, st: _State, context: str, why: str, retry_after: float | None) -> float:
        delay = self._backoff(st.attempt, retry_after)
        log.info("retrying %s after %s in %.2fs", context, why, delay)
        st.attempt += 1
        self.retries += 1
        return delay

    def _unauthorized(self, body: bytes, sent_auth: bool) -> RegistryError:
        base = error_for(401, body)
        ch = self.auth.challenge
        if sent_auth and self.auth.has_credentials and ch is not None and ch.scheme == "bearer":
            # The token server accepted the credentials but the registry still says no:
            # the account lacks the permission (a token without the scope).
            return PermissionDenied(401, base.code or "DENIED", base.message or "not allowed")
        return AuthenticationError(401, base.code or "UNAUTHORIZED", base.message or "unauthorized")


@dataclass
class _State:
    scopes: list[str]
    replayable: bool
    counted: bool = False  # counts against the registry's pull quota
    quota_out: bool = False  # counted as in flight in the quota window
    attempt: int = 0
    auth_rounds: int = 0


def origin_text(url: str) -> str:
    """scheme://host[:port] of a URL for messages (no userinfo, path or query)."""
    parts = urlsplit(strip_userinfo(url))
    return f"{parts.scheme}://{parts.netloc}"


async def _read_small(resp: aiohttp.ClientResponse, limit: int = 64 << 10) -> bytes:
    # Enough for any registry error document; only a short excerpt of it is ever shown.
    try:
        return await read_limited(resp, limit)
    except (TimeoutError, aiohttp.ClientError):
        return b""
