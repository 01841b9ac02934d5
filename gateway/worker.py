"""The inbox worker: acts on pending events with bounded concurrency, retrying what fails.

An event leaves the `pending` state only after its runs were recorded and its transfers
started, so a crash at any point replays it; the (event, policy) run row and the transfer
idempotency key make the replay harmless.

Replicas share the inbox: each claims the events it acts on, with a lease renewed while it
works (gateway/inbox.py `claim_due`). An event whose replica died is claimed by another one
when the lease runs out, and replayed there as after a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time

import grpc

from gateway import inbox as inbox_mod
from gateway.endpoints import EndpointDirectory
from gateway.inbox import Inbox, InboxEvent
from gateway.leases import DEFAULT_LEASE_S
from gateway.runner import Push, Runner, SourceRefused, TransientError
from servicekit.logs import bind, context_id
from servicekit.retry import Backoff

log = logging.getLogger("gateway.worker")

# Test hook: when set, events are recorded and acknowledged but never acted on (used to prove
# that an acknowledged event survives a SIGKILL).
HOLD_ENV = "MIRROR_GATEWAY_HOLD_INBOX"


class InboxWorker:
    """Background task pulling due events from the inbox."""

    def __init__(
        self,
        inbox: Inbox,
        runner: Runner,
        directory: EndpointDirectory,
        *,
        concurrency: int = 8,
        max_attempts: int = 20,
        base_delay_s: float = 0.5,
        max_delay_s: float = 60.0,
        idle_poll_s: float = 5.0,
        owner: str = "local",
        lease_s: float = DEFAULT_LEASE_S,
    ) -> None:
        self.inbox = inbox
        self.db = inbox.db
        self.owner = owner
        self.lease_s = lease_s
        self.runner = runner
        self.directory = directory
        self.concurrency = concurrency
        self.max_attempts = max_attempts
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self.idle_poll_s = idle_poll_s
        self.hold = os.environ.get(HOLD_ENV, "") not in ("", "0")
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._busy_images: dict[str, tuple[str, str]] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._renew_task: asyncio.Task[None] | None = None
        self._slots = asyncio.Semaphore(concurrency)

    def start(self) -> None:
        if self.hold:
            log.warning("%s is set: events are recorded but not acted on", HOLD_ENV)
            return
        self._loop_task = asyncio.create_task(self._loop())
        self._renew_task = asyncio.create_task(self._renew_forever())

    async def stop(self) -> None:
        tasks = [
            t
            for t in [self._loop_task, self._renew_task, *self._inflight.values()]
            if t is not None
        ]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t

    async def _loop(self) -> None:
        while True:
            self.inbox.wake.clear()
            try:
                started = await self._claim_and_start()
                nxt = await self.db.run(self.inbox.next_due_time)
            except Exception as exc:
                # The database is unreachable or locked: try again shortly, never stop.
                log.warning("reading the inbox failed: %s", exc)
                started, nxt = [], time.time() + 1.0
            # When every slot is busy, a finishing task sets wake.
            timeout = self.idle_poll_s
            if nxt is not None and not started:
                left = nxt - time.time()
                # Due already but not claimed (another event of its tag is in flight, maybe
                # on another replica): looked at again shortly, not in a busy loop.
                timeout = max(0.05, min(timeout, left)) if left > 0 else 0.25
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that lands
            # as the wait completes, and this loop would then outlive stop().
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self.inbox.wake.wait()

    async def _claim_and_start(self) -> list[InboxEvent]:
        free = self.concurrency - len(self._inflight)
        if free <= 0:
            return []
        due = await self.db.run(
            self.inbox.claim_due, self.owner, self.lease_s, free, set(self._inflight)
        )
        busy = set(self._busy_images.values())
        started = []
        for ev in due:
            key = (ev.repository, ev.tag)
            if key in busy:
                # One event per image tag at a time, oldest first: pushes of one tag are
                # acted on in the order they were received. (The claim skips a tag in flight
                # anywhere; this guards the local bookkeeping.)
                await self.db.run(self.inbox.release_claim, ev.id, self.owner)
                continue
            busy.add(key)
            self._busy_images[ev.id] = key
            self._inflight[ev.id] = asyncio.create_task(self._handle(ev))
            started.append(ev)
        return started

    async def _renew_forever(self) -> None:
        """Renew the claims of the events in flight here, every third of the lease."""
        context_id.set("inbox-claims")
        while True:
            await asyncio.sleep(self.lease_s / 3)
            mine = list(self._inflight)
            if not mine:
                continue
            try:
                held = await self.db.run(self.inbox.renew_claims, self.owner, mine, self.lease_s)
            except Exception as exc:
                log.warning("renewing the claims of events in flight failed: %s", exc)
                continue
            for event_id in set(mine) - held:
                if event_id in self._inflight:
                    # Our lease ran out (this replica stalled) and another replica took the
                    # event: both act on it, harmlessly (runs and transfers are idempotent).
                    log.warning("event %s: the claim ran out while it was acted on", event_id)

    async def _handle(self, ev: InboxEvent) -> None:
        # Each event runs in its own task: its log lines (here and in the runner) carry its id.
        context_id.set(ev.id)
        bind(event=ev.id, repository=ev.repository, tag=ev.tag)
        try:
            async with self._slots:
                await self._process(ev)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # never let one event kill the worker
            log.exception("event %s failed unexpectedly", ev.id)
            try:
                await self._retry(ev, f"{type(exc).__name__}: {exc}")
            except Exception:
                # Not even recorded: its claim runs out and it is tried again then.
                log.exception("event %s: cannot record the failure", ev.id)
        finally:
            self._inflight.pop(ev.id, None)
            self._busy_images.pop(ev.id, None)
            self.inbox.wake.set()

    async def _process(self, ev: InboxEvent) -> None:
        try:
            endpoint = ev.endpoint or await self.directory.resolve(ev.hosts)
        except Exception as exc:
            await self._retry(ev, f"cannot list endpoints: {exc}")
            return
        if endpoint is None:
            msg = (
                f"push of {ev.repository}:{ev.tag} came from an unknown registry "
                f"({', '.join(ev.hosts) or 'no host'}); register it as an endpoint "
                "(or add an alias) to act on its events"
            )
            log.warning("event %s: %s", ev.id, msg)
            await self.db.run(self.inbox.finish, ev.id, inbox_mod.UNKNOWN_SOURCE, msg)
            return
        push = Push(
            event_id=ev.id,
            trigger=ev.trigger,
            endpoint=endpoint,
            repository=ev.repository,
            tag=ev.tag,
            digest=ev.digest,
            evaluation_time=ev.received_at,
        )
        try:
            runs = await self.runner.act(push)
        except TransientError as exc:
            if ev.attempts + 1 >= self.max_attempts:
                # Giving up: every policy of the source gets a FAILED run saying why.
                await self.runner.record_failure(push, f"given up: {exc}")
            await self._retry(ev, str(exc))
            return
        except (SourceRefused, grpc.aio.AioRpcError) as exc:
            # Another try would fail the same way (act() turns transient gRPC errors into
            # TransientError): every policy of the source gets a FAILED run saying why, now.
            why = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
            runs = await self.runner.record_failure(push, f"not retried: {why}")
            log.warning("event %s: not retried: %s", ev.id, why)
            await self.db.run(self.inbox.finish, ev.id, inbox_mod.FAILED, f"not retried: {why}")
            return
        await self.db.run(self.inbox.finish, ev.id, inbox_mod.DONE, f"{len(runs)} run(s)")
        log.info(
            "event %s (%s %s:%s): %d run(s)", ev.id, endpoint, ev.repository, ev.tag, len(runs)
        )

    async def _retry(self, ev: InboxEvent, message: str) -> None:
        attempts = ev.attempts + 1
        if attempts >= self.max_attempts:
            log.error("event %s given up after %d attempts: %s", ev.id, attempts, message)
            await self.db.run(self.inbox.finish, ev.id, inbox_mod.FAILED, message)
            return
        delay = Backoff(self.base_delay_s, self.max_delay_s).delay(attempts - 1)
        log.warning("event %s: %s; retry %d in %.1fs", ev.id, message, attempts, delay)
        await self.db.run(self.inbox.retry_later, ev.id, delay, message)
