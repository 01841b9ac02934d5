"""Sends pending deliveries: signed POSTs, retried with backoff, given up with a reason.

The database is the queue of record (gateway/subscriptions.py); a scheduler moves due rows
into a bounded in-memory queue that a few senders drain, so a slow receiver never holds more
than its share of memory and a restart resumes every pending delivery (at least once: a
receiver dedupes by the X-Mirror-Event-Id header). Of several gateway replicas, the one
holding the `deliveries` lease sends (gateway/leases.py); the others only write the rows.

Each attempt is signed afresh: `X-Mirror-Timestamp: <unix seconds>` and
`X-Mirror-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>." + body)>` (docs/events.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import aiohttp
from mirror.v1 import gateway_pb2

from gateway.subscriptions import DeliveryRecord, SubscriptionStore, Target
from servicekit import metrics
from servicekit.logs import context_id
from servicekit.retry import Backoff, retryable_status

log = logging.getLogger("gateway.deliveries")

Delivery = gateway_pb2.Delivery
SIGNATURE_HEADER = "X-Mirror-Signature"
TIMESTAMP_HEADER = "X-Mirror-Timestamp"
EVENT_ID_HEADER = "X-Mirror-Event-Id"
EVENT_TYPE_HEADER = "X-Mirror-Event"
DELIVERY_HEADER = "X-Mirror-Delivery"
# Finished log entries are kept this long.
LOG_RETENTION_S = 30 * 24 * 3600


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The X-Mirror-Signature value for `body` sent at `timestamp`."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def headers_for(d: DeliveryRecord, target: Target, now: float) -> dict[str, str]:
    ts = str(int(now))
    h = {
        "Content-Type": "application/json",
        TIMESTAMP_HEADER: ts,
        EVENT_ID_HEADER: d.event_id,
        EVENT_TYPE_HEADER: gateway_pb2.EventType.Name(d.event_type).removeprefix(  # type: ignore[arg-type]
            "EVENT_TYPE_"
        ),
        DELIVERY_HEADER: d.id,
    }
    if target.secret:
        h[SIGNATURE_HEADER] = sign(target.secret, ts, d.body)
    return h


def _retry_after(value: str | None, cap: float) -> float | None:
    """Seconds of a Retry-After header (delta or HTTP date), capped; None when absent/bad."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), cap)


class DeliveryWorker:
    """Background sender of the store's pending deliveries."""

    def __init__(
        self,
        store: SubscriptionStore,
        *,
        attempts: int = 12,
        max_age_s: float = 24 * 3600.0,
        base_delay_s: float = 2.0,
        max_delay_s: float = 600.0,
        timeout_s: float = 10.0,
        queue_size: int = 1000,
        senders: int = 4,
        clock: Callable[[], float] = time.time,
        idle_s: float = 5.0,
    ) -> None:
        self.store = store
        self.attempts = max(1, attempts)
        self.max_age_s = max_age_s
        self.backoff = Backoff(base_delay_s, max_delay_s)
        self.max_delay_s = max_delay_s
        self.timeout_s = timeout_s
        self.senders = senders
        self.clock = clock
        # Longest wait between looks at the table (deliveries other replicas wrote are found
        # no later than this).
        self.idle_s = idle_s
        self._queue: asyncio.Queue[str] = asyncio.Queue(queue_size)
        self._inflight: set[str] = set()
        self._wakeup = asyncio.Event()
        self._progress = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self.delivered = 0
        self.failed = 0

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            headers={"User-Agent": "image-mirror-gateway"},
        )
        self._tasks = [asyncio.create_task(self._schedule())]
        self._tasks += [asyncio.create_task(self._sender()) for _ in range(self.senders)]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks = []
        if self._session is not None:
            await self._session.close()
            self._session = None

    def wake(self) -> None:
        """New deliveries were written: look for due ones now."""
        self._wakeup.set()

    async def drain(self) -> None:
        """Wait until nothing is pending or in flight (tests; the caller bounds the wait)."""
        while await self.store.db.run(self.store.pending_count) or self._inflight:
            self._progress.clear()
            self.wake()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._progress.wait()

    async def _schedule(self) -> None:
        context_id.set("deliveries")
        last_housekeeping = 0.0
        while True:
            self._wakeup.clear()
            now = self.clock()
            try:
                if now - last_housekeeping > 3600:
                    last_housekeeping = now
                    await self.store.db.run(self.store.forget_finished, now - LOG_RETENTION_S)
                expired = await self.store.db.run(
                    self.store.give_up_older_than, now - self.max_age_s, set(self._inflight)
                )
                if expired:
                    self.failed += expired
                    metrics.EVENT_DELIVERIES.labels("failed").inc(expired)
                    log.warning("gave up %d delivery(ies) past the maximum age", expired)
                    self._progress.set()
                free = self._queue.maxsize - self._queue.qsize()
                due = (
                    await self.store.db.run(self.store.due, now, free, set(self._inflight))
                    if free > 0
                    else []
                )
                for d_id in due:
                    self._inflight.add(d_id)
                    self._queue.put_nowait(d_id)
                nxt = await self.store.db.run(self.store.next_due_time)
            except Exception:
                # A locked or full database: try again shortly, never stop sending.
                log.exception("reading pending deliveries failed")
                nxt = None
            wait = self.idle_s if nxt is None else min(max(nxt - self.clock(), 0.05), self.idle_s)
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation that
            # arrives as the event is set (stop() right after a wake), and never end.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wakeup.wait()

    async def _sender(self) -> None:
        while True:
            d_id = await self._queue.get()
            try:
                await self._attempt(d_id)
            except Exception as exc:
                await self._unexpected(d_id, exc)
            finally:
                self._inflight.discard(d_id)
                self._queue.task_done()
                self._progress.set()
                self.wake()

    async def _attempt(self, d_id: str) -> None:
        assert self._session is not None
        loaded = await self.store.db.run(self.store.load, d_id)
        if loaded is None:
            return  # delivered, given up, or its subscription was deleted
        d, target = loaded
        context_id.set(d.run_id or d.id)
        now = self.clock()
        code, retry_after = 0, None
        try:
            async with self._session.post(
                target.url,
                data=d.body,
                headers=headers_for(d, target, now),
                allow_redirects=False,  # the body goes where the subscriber said, nowhere else
            ) as resp:
                code = resp.status
                if 200 <= code < 300:
                    await self.store.db.run(
                        self.store.record_attempt,
                        d.id, state=Delivery.STATE_DELIVERED, response_code=code,
                        message=f"delivered: HTTP {code}", at=now,
                    )
                    self.delivered += 1
                    metrics.EVENT_DELIVERIES.labels("delivered").inc()
                    return
                retry_after = _retry_after(resp.headers.get("Retry-After"), self.max_delay_s)
                retryable = retryable_status(code)
                problem = f"HTTP {code}"
                if 300 <= code < 400:
                    problem += " (redirects are not followed)"
        except (aiohttp.ClientError, TimeoutError) as exc:
            retryable = True
            problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        await self._failed(d, code, problem, now, retryable=retryable, retry_after=retry_after,
                           where=_origin(target.url))

    async def _unexpected(self, d_id: str, exc: Exception) -> None:
        """Not an answer of the receiver (a database error, a secret that no longer decrypts):
        counted as an attempt, so it can never loop hot or forever."""
        log.error("delivery %s: %s: %s", d_id, type(exc).__name__, exc)
        try:
            d = await self.store.db.run(self.store.get_delivery, d_id)
            if d is None or d.state != Delivery.STATE_PENDING:
                return
            # A ValueError is a secret the current key cannot decrypt: no retry mends that.
            await self._failed(d, 0, f"{type(exc).__name__}: {exc}", self.clock(),
                               retryable=not isinstance(exc, ValueError), retry_after=None,
                               where=f"subscription {d.subscription_id}")
        except Exception:
            log.exception("delivery %s: cannot record the failed attempt", d_id)

    async def _failed(
        self, d: DeliveryRecord, code: int, problem: str, now: float, *, retryable: bool,
        retry_after: float | None, where: str,
    ) -> None:
        attempts = d.attempts + 1
        if not retryable:
            await self._give_up(d, code, f"not retried: {problem}", now, where)
        elif attempts >= self.attempts:
            await self._give_up(
                d, code, f"given up after {attempts} attempts: {problem}", now, where
            )
        else:
            delay = self.backoff.delay(attempts - 1)
            if retry_after is not None:
                delay = max(delay, retry_after)
            await self.store.db.run(
                self.store.record_attempt,
                d.id, state=Delivery.STATE_PENDING, response_code=code,
                message=f"attempt {attempts} failed: {problem}; retrying", at=now,
                next_attempt_at=now + delay,
            )
            metrics.EVENT_DELIVERIES.labels("retried").inc()

    async def _give_up(
        self, d: DeliveryRecord, code: int, message: str, now: float, where: str
    ) -> None:
        await self.store.db.run(
            self.store.record_attempt,
            d.id, state=Delivery.STATE_FAILED, response_code=code, message=message, at=now
        )
        self.failed += 1
        metrics.EVENT_DELIVERIES.labels("failed").inc()
        log.warning(
            "delivery %s of run %s to subscription %s (%s) failed: %s",
            d.id, d.run_id, d.subscription_id, where, message,
        )


def _origin(url: str) -> str:
    """scheme://host[:port] of a URL: paths and queries of webhook URLs often hold tokens."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"
