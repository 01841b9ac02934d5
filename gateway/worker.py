"""The inbox worker: acts on pending events with bounded concurrency, retrying what fails.

An event leaves the `pending` state only after its runs were recorded and its transfers
started, so a crash at any point replays it; the (event, policy) run row and the transfer
idempotency key make the replay harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time

from gateway import inbox as inbox_mod
from gateway.endpoints import EndpointDirectory
from gateway.inbox import Inbox, InboxEvent
from gateway.runner import Push, Runner, TransientError
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
    ) -> None:
        self.inbox = inbox
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
        self._slots = asyncio.Semaphore(concurrency)

    def start(self) -> None:
        if self.hold:
            log.warning("%s is set: events are recorded but not acted on", HOLD_ENV)
            return
        self._loop_task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        tasks = [t for t in [self._loop_task, *self._inflight.values()] if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t

    async def _loop(self) -> None:
        while True:
            self.inbox.wake.clear()
            free = self.concurrency - len(self._inflight)
            due = self.inbox.due(free, set(self._inflight)) if free > 0 else []
            busy = set(self._busy_images.values())
            started = []
            for ev in due:
                key = (ev.repository, ev.tag)
                if key in busy:
                    # One event per image tag at a time, oldest first: pushes of one tag are
                    # acted on in the order they were received.
                    continue
                busy.add(key)
                self._busy_images[ev.id] = key
                self._inflight[ev.id] = asyncio.create_task(self._handle(ev))
                started.append(ev)
            due = started
            # When every slot is busy, a finishing task sets wake.
            timeout = self.idle_poll_s
            nxt = self.inbox.next_due_time()
            if nxt is not None and not due:
                timeout = max(0.05, min(timeout, nxt - time.time()))
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that lands
            # as the wait completes, and this loop would then outlive stop().
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self.inbox.wake.wait()

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
            self._retry(ev, f"{type(exc).__name__}: {exc}")
        finally:
            self._inflight.pop(ev.id, None)
            self._busy_images.pop(ev.id, None)
            self.inbox.wake.set()

    async def _process(self, ev: InboxEvent) -> None:
        try:
            endpoint = ev.endpoint or await self.directory.resolve(ev.hosts)
        except Exception as exc:
            self._retry(ev, f"cannot list endpoints: {exc}")
            return
        if endpoint is None:
            msg = (
                f"push of {ev.repository}:{ev.tag} came from an unknown registry "
                f"({', '.join(ev.hosts) or 'no host'}); register it as an endpoint "
                "(or add an alias) to act on its events"
            )
            log.warning("event %s: %s", ev.id, msg)
            self.inbox.finish(ev.id, inbox_mod.UNKNOWN_SOURCE, msg)
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
            self._retry(ev, str(exc))
            return
        self.inbox.finish(ev.id, inbox_mod.DONE, f"{len(runs)} run(s)")
        log.info(
            "event %s (%s %s:%s): %d run(s)", ev.id, endpoint, ev.repository, ev.tag, len(runs)
        )

    def _retry(self, ev: InboxEvent, message: str) -> None:
        attempts = ev.attempts + 1
        if attempts >= self.max_attempts:
            log.error("event %s given up after %d attempts: %s", ev.id, attempts, message)
            self.inbox.finish(ev.id, inbox_mod.FAILED, message)
            return
        delay = Backoff(self.base_delay_s, self.max_delay_s).delay(attempts - 1)
        log.warning("event %s: %s; retry %d in %.1fs", ev.id, message, attempts, delay)
        self.inbox.retry_later(ev.id, delay, message)
