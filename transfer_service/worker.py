"""Runs journaled transfer jobs through the copy engine: bounded concurrency, retries with
backoff, leases shared with other workers, prompt cancel, and progress fanned out to watchers.

Any number of workers (processes sharing one PostgreSQL job table; one on SQLite) run the
jobs. A worker claims a runnable job under a lease (`Journal.claim`: the row is the queue)
and renews its leases every second or so; a renewal that finds a lease gone (it expired and
another worker took the job) stops that copy here without recording anything, and a worker
that dies simply stops renewing, so another one claims its jobs once their leases expire and
resumes them from what is already at the destination (the engine HEADs every blob first).
CancelTransfer and WatchTransfer work from any replica: a cancel of a job running elsewhere
sets `cancel_requested`, which its owner sees at its next renewal; a watcher follows the row.

Scheduling rules (see docs/INTERFACES.md, Transfer service):
- jobs that write one destination tag (endpoint, repository, tag) run one at a time, in
  creation order, so the last one created (the newest push) writes last: a job is not
  claimable while an older unfinished job writes its tag (across all workers);
- within a worker, at most `max_jobs_per_endpoint` running jobs read from one source
  endpoint, so a stalled source holds only its share of the `max_jobs` slots; with the
  default share (half), a source may use all slots but one while no other source has
  runnable jobs (the one left free starts another source's job at once); a share set by the
  operator is a hard cap;
- a retryable failure is retried `max_attempts` times on a short backoff (WAITING with
  `next_attempt_time`: any worker may take the retry); then a job that could not reach its
  registry (or was asked to wait longer than the client's cap) is rescheduled: WAITING with
  `next_attempt_time`, on a jittered backoff growing up to `reschedule_max`
  (servicekit.retry.Backoff.spread). Permanent errors fail it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ParamSpec, TypeVar
from urllib.parse import urlsplit

from registry_client.errors import DigestMismatch
from servicekit import metrics
from servicekit.diskfull import no_space_message
from servicekit.logs import context_id, fields
from servicekit.retry import Backoff, is_retryable, retry_after_hint
from transfer_service.endpoints import EndpointStore
from transfer_service.engine.referrers import summary as referrer_summary
from transfer_service.jobs import JobRecord, JobSpec, JobState, Journal, Progress, effective_tag
from transfer_service.retry import describe_error, registry_error_code
from transfer_service.source_tag import SourceTagMoved, tag_check

log = logging.getLogger("transfer_service.worker")

P = ParamSpec("P")
R = TypeVar("R")

# A watcher of a job running in this process hears of every change; it re-reads the journal
# after this long without one (belt and braces).
_WATCH_POLL_SECONDS = 5.0
# A watcher of a job that runs on another worker (or waits) follows its row this often.
_WATCH_ROW_SECONDS = 0.5
# How many waiting jobs are told, per pass, why they do not start.
_NOTE_BATCH = 100
# Why waiting jobs wait is said at most this often: during a backlog every finished job
# wakes the claim loop, and re-reading a hundred waiting rows each time costs more than
# the copies themselves.
_NOTE_EVERY_S = 1.0

__all__ = ["Worker", "default_worker_id", "destination_key", "effective_tag"]


def default_worker_id() -> str:
    """hostname-pid: unique among the workers sharing a job table."""
    return f"{socket.gethostname()}-{os.getpid()}"


def destination_key(spec: JobSpec) -> tuple[str, str, str] | None:
    """(endpoint, repository, tag) the job writes; None for a copy by digest only."""
    tag = effective_tag(spec)
    return (spec.dst_endpoint, spec.dst_repository, tag) if tag else None


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _set_active_gauges(counts: dict[JobState, int]) -> None:
    for state in (JobState.WAITING, JobState.RUNNING):
        metrics.TRANSFERS_ACTIVE.labels(state=state.value).set(counts.get(state, 0))


class Worker:
    """Claims and executes jobs from the journal; one instance per process.

    `worker_id` names it in the job rows (lease_owner) and must be unique among the workers
    of one job table; `lease_seconds` is how long a claimed job stays its own without a
    renewal (renewed every `min(1, lease_seconds / 3)` s); `poll_interval` how often it looks
    for runnable jobs it was not told of (made on another replica, or due for a retry).
    """

    def __init__(
        self,
        journal: Journal,
        endpoints: EndpointStore,
        engine: Any,
        *,
        max_jobs: int = 16,
        max_attempts: int = 5,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        progress_interval: float = 1.0,
        max_jobs_per_endpoint: int | None = None,
        reschedule_base: float = 60.0,
        reschedule_max: float = 6 * 3600.0,
        worker_id: str | None = None,
        lease_seconds: float = 30.0,
        poll_interval: float = 0.5,
    ) -> None:
        self._journal = journal
        self._db = journal.db
        self._endpoints = endpoints
        self._engine = engine
        self._max_jobs = max_jobs
        self._max_attempts = max_attempts
        self._quick = Backoff(base=backoff_base, cap=backoff_max)
        self._long = Backoff(base=reschedule_base, cap=max(reschedule_max, reschedule_base))
        self._per_endpoint = max(1, max_jobs_per_endpoint or max_jobs // 2)
        # A limit the operator set is a hard cap; the default share is lent out when idle.
        self._hard_cap = max_jobs_per_endpoint is not None
        self._progress_interval = progress_interval
        self.worker_id = worker_id or default_worker_id()
        self._lease = lease_seconds
        self._renew_every = min(1.0, lease_seconds / 3)
        self._poll = poll_interval
        # An embedded database has one process (the data folder's lock): a job not running
        # here runs nowhere, and the leases of an earlier process are void.
        self._single = self._db.dialect == "sqlite"
        if journal.on_counts is None:
            journal.on_counts = _set_active_gauges
        # Where ENOSPC is reported (the spool; the database lives beside it by default).
        self._volume = str(getattr(engine, "spool_dir", "") or Path.cwd())
        # Source endpoint -> jobs of it running here.
        self._src_running: Counter[str] = Counter()
        # Job id -> the task running it here (claimed, until its outcome is recorded).
        self._jobs: dict[str, asyncio.Task[None]] = {}
        self._copies: dict[str, asyncio.Task[Any]] = {}
        # Set once the runner has recorded the outcome of a job's current attempt.
        self._concluded: dict[str, asyncio.Event] = {}
        self._cancel_requested: set[str] = set()
        # Jobs whose lease this worker lost: their copy stops, their outcome is not recorded.
        self._lost: set[str] = set()
        self._live: dict[str, JobRecord] = {}
        self._watchers: dict[str, set[asyncio.Queue[JobRecord]]] = {}
        self._wake = asyncio.Event()
        self._timers: set[asyncio.TimerHandle] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._renewed = time.monotonic()
        self._claim_error = ""
        self._noted_at = -_NOTE_EVERY_S

    async def _run_db(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        return await self._db.run(fn, *args, **kwargs)

    async def start(self) -> None:
        """Start claiming jobs (those left running by this worker's earlier life, or by the
        one process of an embedded database, at once; those of other workers once their
        leases expire)."""
        if self._loops:
            return
        released = await self._run_db(
            self._journal.release, None if self._single else self.worker_id
        )
        if released:
            log.info("resuming %d transfer(s) left running", released)
        await self._renew()  # a heartbeat first: the live-worker count includes this one
        self._loops = [
            asyncio.create_task(self._claim_forever(), name=f"transfer-claims-{self.worker_id}"),
            asyncio.create_task(self._renew_forever(), name=f"transfer-leases-{self.worker_id}"),
        ]

    async def stop(self) -> None:
        """Stop claiming and stop the running copies; they stay `running` in the journal
        with their leases ended, so another worker (or this one, restarted) resumes them."""
        for t in self._loops:
            t.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        self._loops = []
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        jobs = list(self._jobs.values())
        for t in jobs:
            t.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)
        try:
            await self._run_db(self._journal.release, self.worker_id)
            await self._run_db(self._journal.leave, self.worker_id)
        except Exception as exc:  # the database is gone: the leases expire by themselves
            log.warning("could not end this worker's leases: %s", exc)

    def submit(self, job_id: str) -> None:
        """A new waiting job is in the journal: look for work now."""
        self._wake.set()

    def _wake_in(self, delay: float) -> None:
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._timers.discard(handle)
            self._wake.set()

        # A little late: the claim compares the stored time with the database's clock.
        handle = loop.call_later(max(0.0, delay) + 0.01, fire)
        self._timers.add(handle)

    async def snapshot(self, job_id: str) -> JobRecord:
        """The job as the journal has it, with the live counters of a job running here."""
        live = self._live.get(job_id)
        return live if live is not None else await self._run_db(self._journal.get, job_id)

    def overlay(self, job: JobRecord) -> JobRecord:
        """`job` (read from the journal) with the live counters if it runs here."""
        return self._live.get(job.id, job)

    async def cancel(self, job_id: str, wait: float = 30.0) -> JobRecord:
        """Cancel a waiting or running job wherever it runs; a final job is returned unchanged.
        Waits up to `wait` seconds for a running job's worker to record the cancel."""
        job = await self._run_db(self._journal.get, job_id)
        if job.state.final:
            return job
        if job_id in self._copies:
            return await self._cancel_here(job_id, wait)
        if self._single:
            done = await self._run_db(
                self._journal.finish, job_id, JobState.CANCELED, "canceled by request"
            )
            if done is None:
                # It was picked up (or finished) meanwhile: cancel it the running way.
                if job_id in self._copies:
                    return await self._cancel_here(job_id, wait)
                return await self._run_db(self._journal.get, job_id)
            self._final(done)
            return done
        record, canceled = await self._run_db(self._journal.cancel_or_request, job_id)
        if canceled:
            self._final(record)
            return record
        # It runs: here (claimed meanwhile) or on another worker, which cancels it when its
        # next lease renewal reads cancel_requested.
        deadline = time.monotonic() + wait
        while not record.state.final and time.monotonic() < deadline:
            if job_id in self._copies:
                return await self._cancel_here(job_id, max(0.0, deadline - time.monotonic()))
            await asyncio.sleep(0.1)
            record = await self._run_db(self._journal.get, job_id)
        return record

    async def _cancel_here(self, job_id: str, wait: float) -> JobRecord:
        task = self._copies.get(job_id)
        concluded = self._concluded.get(job_id)
        if task is not None and concluded is not None:
            self._cancel_requested.add(job_id)
            task.cancel()
            # The runner records CANCELED once the engine has removed its spool files.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(concluded.wait(), wait)
        return await self._run_db(self._journal.get, job_id)

    async def watch(self, job_id: str, final_only: bool = False) -> AsyncIterator[JobRecord]:
        """The current snapshot at once, then each change (`final_only`: only the final
        state), ending after the final state.

        A job running here publishes every change; one running on another worker (or
        waiting) is followed in the journal every half second.
        """
        q: asyncio.Queue[JobRecord] = asyncio.Queue(maxsize=1)
        self._watchers.setdefault(job_id, set()).add(q)
        try:
            last = await self.snapshot(job_id)
            yield last
            while not last.state.final:
                poll = _WATCH_POLL_SECONDS if job_id in self._live else _WATCH_ROW_SECONDS
                try:
                    # asyncio.timeout: wait_for on 3.11 can swallow the cancel of a watcher
                    # that went away just as a snapshot arrived.
                    async with asyncio.timeout(poll):
                        snap = await q.get()
                except TimeoutError:
                    snap = await self.snapshot(job_id)
                    if snap == last:
                        continue
                last = snap
                if not final_only or snap.state.final:
                    yield snap
        finally:
            qs = self._watchers.get(job_id)
            if qs is not None:
                qs.discard(q)
                if not qs:
                    del self._watchers[job_id]

    # -- claiming -------------------------------------------------------------------------

    async def _claim_forever(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self._fill()
                self._claim_error = ""
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The database is unreachable (or full): try again at the next poll.
                text = no_space_message(exc, self._volume) or str(exc)
                if text != self._claim_error:
                    log.error("cannot claim transfers: %s", text)
                    self._claim_error = text
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll):
                    await self._wake.wait()

    async def _fill(self) -> None:
        """Claim runnable jobs while this worker has free slots, then say why the rest wait."""
        while len(self._jobs) < self._max_jobs:
            avoid, then_avoid = self._source_limits()
            job = await self._run_db(
                self._journal.claim,
                self.worker_id,
                self._lease,
                avoid=avoid,
                then_avoid=then_avoid,
            )
            if job is None:
                break
            self._begin(job)
        now = time.monotonic()
        if now - self._noted_at >= _NOTE_EVERY_S:
            self._noted_at = now
            await self._note_blocked()

    def _source_limits(self) -> tuple[list[str], list[str] | None]:
        """Sources not to claim from: those at their share; then (the default share, lent
        out while no other source has runnable jobs) those at all slots but one."""
        avoid = [s for s, n in self._src_running.items() if n >= self._per_endpoint]
        if self._hard_cap or not avoid:
            return avoid, None
        wide = max(self._per_endpoint, self._max_jobs - 1)
        return avoid, [s for s, n in self._src_running.items() if n >= wide]

    def _begin(self, job: JobRecord) -> None:
        self._src_running[job.spec.src_endpoint] += 1
        self._live[job.id] = job
        self._publish(job)
        task = asyncio.create_task(self._run(job), name=f"transfer-{job.id}")
        self._jobs[job.id] = task
        task.add_done_callback(lambda _t: self._ended(job))

    def _ended(self, job: JobRecord) -> None:
        self._jobs.pop(job.id, None)
        src = job.spec.src_endpoint
        self._src_running[src] -= 1
        if self._src_running[src] <= 0:
            del self._src_running[src]
        self._wake.set()  # a slot is free

    async def _note_blocked(self) -> None:
        """Record why runnable waiting jobs do not start: an older job writes their tag
        first, or (while this worker has free slots) their source's share is in use. Only
        changed messages are written."""
        free = len(self._jobs) < self._max_jobs
        full = {s for s, n in self._src_running.items() if n >= self._per_endpoint}
        notes: list[tuple[str, str]] = []
        for job, blocker in await self._run_db(self._journal.blocked, _NOTE_BATCH):
            s = job.spec
            if blocker:
                notes.append((
                    job.id,
                    f"waiting for transfer {blocker}, which writes {s.dst_repository}:"
                    f"{effective_tag(s)} on {s.dst_endpoint} first (one at a time per tag)",
                ))
            elif free and s.src_endpoint in full:
                notes.append((
                    job.id,
                    f"waiting for a job slot of source endpoint {s.src_endpoint} "
                    f"({self._src_running[s.src_endpoint]} running at most)",
                ))
        if notes:
            for noted in await self._run_db(self._journal.note_waiting_many, notes):
                self._publish(noted)

    # -- leases ---------------------------------------------------------------------------

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self._renew_every)
            await self._renew()

    async def _renew(self) -> None:
        """Extend this worker's leases and heartbeat; stop the copies whose lease is gone,
        cancel those asked to cancel on another replica."""
        ids = list(self._jobs)
        if self._single and not ids:
            self._renewed = time.monotonic()  # nothing held, nothing to lose
            return  # one process, nothing running: no lease to keep, no one to count
        asked = time.monotonic()
        try:
            # One process on an embedded database: no heartbeat (an idle service writes
            # nothing), its leases only keep its own claims off its running jobs.
            renewal = await self._run_db(
                self._journal.renew, self.worker_id, ids, self._lease, not self._single
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("cannot renew the leases of this worker: %s", exc)
            if time.monotonic() - self._renewed > self._lease:
                # Expired by now: another worker may already run them.
                for job_id in ids:
                    self._lose(job_id, "its lease could not be renewed in time")
            return
        self._renewed = asked
        self._endpoints.live_workers = renewal.live_workers
        for job_id in ids:
            if job_id not in renewal.owned:
                self._lose(job_id, "its lease was lost (another worker may run it now)")
            elif job_id in renewal.cancel and job_id not in self._cancel_requested:
                task = self._copies.get(job_id)
                if task is not None:
                    log.info("transfer %s: cancel requested on another replica", job_id)
                    self._cancel_requested.add(job_id)
                    task.cancel()

    def _lose(self, job_id: str, why: str) -> None:
        """Stop a copy here without recording an outcome (the job is not ours any more)."""
        copy = self._copies.get(job_id)
        if copy is None or job_id in self._lost:
            return  # not copying (its outcome is being recorded, under the owner's check)
        log.warning("transfer %s: stopped on this worker: %s", job_id, why)
        self._lost.add(job_id)
        copy.cancel()

    # -- running one job ------------------------------------------------------------------

    def _publish(self, job: JobRecord) -> None:
        for q in self._watchers.get(job.id, ()):
            # Latest wins: a slow watcher skips intermediate snapshots, never the final one.
            if q.full():
                q.get_nowait()
            q.put_nowait(job)

    async def _run(self, job: JobRecord) -> None:
        job_id = job.id
        token = context_id.set(job_id)
        try:
            with fields(transfer=job_id):
                if job.cancel_requested:
                    # Asked to cancel while its worker died: nothing to copy.
                    self._live.pop(job_id, None)
                    done = await self._run_db(
                        self._journal.finish, job_id, JobState.CANCELED, "canceled by request",
                        owner=self.worker_id,
                    )
                    if done is not None:
                        self._final(done)
                    return
                await self._attempt(job)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            full = no_space_message(exc, self._volume)
            if full is not None:
                # The journal could not record the outcome; the lease expires and the job
                # is resumed (here or elsewhere).
                log.error("transfer %s: %s; the outcome was not recorded", job_id, full)
            else:
                log.exception("transfer %s: unexpected failure of the runner", job_id)
        finally:
            self._live.pop(job_id, None)
            self._lost.discard(job_id)
            context_id.reset(token)

    async def _attempt(self, job: JobRecord) -> None:
        job_id = job.id
        log.info(
            "transfer %s: attempt %d: %s/%s:%s -> %s/%s",
            job_id, job.attempts, job.spec.src_endpoint, job.spec.src_repository,
            job.spec.src_reference, job.spec.dst_endpoint, job.spec.dst_repository,
        )
        started = time.monotonic()
        copy = asyncio.create_task(self._copy(job), name=f"transfer-copy-{job_id}")
        self._copies[job_id] = copy
        concluded = self._concluded[job_id] = asyncio.Event()
        flusher = asyncio.create_task(self._flush_progress(job_id))
        try:
            try:
                await asyncio.wait([copy])
            except asyncio.CancelledError:
                # The service is stopping: the job stays `running`; stop() ends the lease.
                copy.cancel()
                await asyncio.gather(copy, return_exceptions=True)
                with contextlib.suppress(Exception):
                    await self._save_live(job_id)
                raise
            finally:
                flusher.cancel()
                self._copies.pop(job_id, None)
                live = self._live.pop(job_id, job)
            await self._conclude(job_id, copy, live, time.monotonic() - started)
        finally:
            self._concluded.pop(job_id, None)
            self._cancel_requested.discard(job_id)
            concluded.set()
            self._update_spool_gauge()

    async def _conclude(
        self, job_id: str, copy: asyncio.Task[Any], live: JobRecord, seconds: float
    ) -> None:
        me = self.worker_id
        if job_id in self._lost:
            log.info("transfer %s: left to the worker that holds its lease now", job_id)
            return
        cancel_requested = job_id in self._cancel_requested
        if copy.cancelled() or (cancel_requested and copy.exception() is not None):
            done = await self._run_db(
                self._journal.finish, job_id, JobState.CANCELED, "canceled by request",
                progress=live.progress, owner=me,
            )
            if done is not None:
                log.info("transfer %s: canceled", job_id)
                self._final(done)
            return
        exc = copy.exception()
        if exc is None:
            result = copy.result()
            metrics.COPY_SECONDS.observe(seconds)
            done = await self._run_db(
                self._journal.finish,
                job_id,
                JobState.DONE,
                referrer_summary(result, live.spec.copy_referrers),
                progress=Progress.of(getattr(result, "progress", None) or live.progress),
                digest=str(getattr(result, "digest", "") or ""),
                media_type=str(getattr(result, "media_type", "") or ""),
                referrers=list(getattr(result, "referrers", None) or []),
                owner=me,
            )
            if done is not None:
                log.info("transfer %s: done (%s) in %.1fs", job_id, done.digest, seconds)
                self._final(done)
            return
        if isinstance(exc, SourceTagMoved):
            done = await self._run_db(
                self._journal.finish, job_id, JobState.SUPERSEDED, str(exc),
                progress=live.progress, digest=exc.copied, owner=me,
            )
            if done is not None:
                log.info("transfer %s: %s", job_id, exc)
                self._final(done)
            return
        await self._count_registry_error(live, exc)
        full = no_space_message(exc, self._volume)
        message = full or describe_error(exc)
        retryable = full is None and is_retryable(exc)
        asked = retry_after_hint(exc) if retryable else None
        if retryable and asked is None and live.round_attempts < self._max_attempts:
            delay = self._quick.delay(live.round_attempts - 1)
            again = await self._run_db(
                self._journal.retry_later,
                job_id,
                f"attempt {live.attempts} failed: {message}; retrying in {delay:.1f}s",
                time.time() + delay,
                owner=me,
            )
            if again is not None:
                log.warning("transfer %s: %s; retry in %.1fs", job_id, message, delay)
                self._publish(again)
                self._wake_in(delay)
            return
        if retryable and not isinstance(exc, DigestMismatch):
            await self._reschedule(live, exc, message, asked)
            return
        if retryable:
            message = f"gave up after {live.round_attempts} attempts: {message}"
        done = await self._run_db(
            self._journal.finish, job_id, JobState.ERROR, message, progress=live.progress,
            owner=me,
        )
        if done is not None:
            log.warning("transfer %s: error: %s", job_id, message)
            self._final(done)

    async def _reschedule(
        self, live: JobRecord, exc: BaseException, message: str, asked: float | None
    ) -> None:
        """Back to WAITING until a later time: the registry is unreachable (quick retries
        spent) or asked for a longer wait than the client honours."""
        registry = await self._run_db(self._endpoint_of, live, getattr(exc, "registry", ""))
        if asked is not None:
            delay = min(max(asked, 1.0), self._long.cap)
            why = f"registry {registry} asked to wait {asked:.0f}s (Retry-After)"
        else:
            delay = self._long.spread(live.reschedules)
            why = f"registry {registry} failed {live.round_attempts} attempt(s) in a row"
        at = time.time() + delay
        again = await self._run_db(
            self._journal.reschedule,
            live.id,
            f"{message}; {why}; next attempt at {_when(at)} (in {delay:.0f}s)",
            at,
            owner=self.worker_id,
        )
        if again is not None:
            log.warning("transfer %s: rescheduled in %.0fs: %s", live.id, delay, again.message)
            self._publish(again)
            self._wake_in(delay)

    def _final(self, job: JobRecord) -> None:
        metrics.TRANSFERS.labels(state=job.state.value).inc()
        self._publish(job)
        self._wake.set()  # the next job for its destination tag may run

    async def _copy(self, job: JobRecord) -> Any:
        from transfer_service.engine import CopyRequest

        spec = job.spec
        on_progress = self._progress_callback(job.id)
        async with contextlib.AsyncExitStack() as stack:
            src = await stack.enter_async_context(self._endpoints.client_for(spec.src_endpoint))
            # One registry, one client: its requests share one concurrency limit, and the
            # engine spools (instead of holding a GET while it waits for a PATCH slot) only
            # when it sees the same client on both sides.
            dst = (
                src
                if spec.dst_endpoint == spec.src_endpoint
                else await stack.enter_async_context(
                    self._endpoints.client_for(spec.dst_endpoint)
                )
            )
            return await self._engine.copy(
                CopyRequest(
                    src=src,
                    src_repo=spec.src_repository,
                    src_ref=spec.src_reference,
                    dst=dst,
                    dst_repo=spec.dst_repository,
                    dst_tag=effective_tag(spec),
                    platforms=list(spec.platforms),
                    fail_if_tag_exists=spec.fail_if_tag_exists,
                    copy_referrers=tuple(spec.copy_referrers),
                    resumed=job.attempts > 1,
                    before_tag=(
                        tag_check(src, spec.src_repository, spec.source_tag)
                        if spec.source_tag
                        else None
                    ),
                ),
                progress=on_progress,
            )

    def _progress_callback(self, job_id: str) -> Callable[[Any], None]:
        seen = Progress()

        def on_progress(p: Any) -> None:
            nonlocal seen
            current = self._live.get(job_id)
            if current is None:
                return
            prog = Progress.of(p)
            metrics.BYTES_COPIED.inc(max(0, prog.bytes_done - seen.bytes_done))
            for outcome, now, before in (
                ("copied", prog.blobs_done, seen.blobs_done),
                ("skipped", prog.blobs_skipped, seen.blobs_skipped),
                ("mounted", prog.blobs_mounted, seen.blobs_mounted),
            ):
                if now > before:
                    metrics.BLOBS.labels(outcome=outcome).inc(now - before)
            seen = prog
            updated = replace(
                current,
                progress=prog,
                digest=str(getattr(p, "digest", "") or current.digest),
                media_type=str(getattr(p, "media_type", "") or current.media_type),
            )
            self._live[job_id] = updated
            self._publish(updated)

        return on_progress

    async def _flush_progress(self, job_id: str) -> None:
        last: JobRecord | None = None
        while True:
            await asyncio.sleep(self._progress_interval)
            self._update_spool_gauge()
            live = self._live.get(job_id)
            if live is not None and live != last:
                try:
                    await self._save_live(job_id)
                except Exception as exc:  # the database is unreachable: try again later
                    log.warning("transfer %s: progress not saved: %s", job_id, exc)
                    continue
                last = live

    async def _save_live(self, job_id: str) -> None:
        live = self._live.get(job_id)
        if live is not None:
            await self._run_db(
                self._journal.save_progress, job_id, live.progress, live.digest,
                live.media_type, owner=self.worker_id,
            )

    async def _count_registry_error(self, job: JobRecord, exc: BaseException) -> None:
        code = registry_error_code(exc)
        if code:
            registry = await self._run_db(self._endpoint_of, job, getattr(exc, "registry", ""))
            metrics.REGISTRY_ERRORS.labels(registry=registry, code=code).inc()

    def _endpoint_of(self, job: JobRecord, host: str) -> str:
        """The endpoint name of the registry that answered (the transport records its host);
        errors raised above the transport (a digest mismatch found by the engine) do not say
        which side failed, so they name both endpoints. Blocking (reads the endpoints)."""
        for name in (job.spec.src_endpoint, job.spec.dst_endpoint):
            try:
                base = self._endpoints.config_for(name).base_url
            except Exception:  # the endpoint was deleted meanwhile
                continue
            if host and urlsplit(base).netloc == host:
                return name
        return f"{job.spec.src_endpoint}|{job.spec.dst_endpoint}"

    def _update_spool_gauge(self) -> None:
        quota = getattr(self._engine, "quota", None)
        used = getattr(quota, "used", None)
        if isinstance(used, int):
            metrics.SPOOL_BYTES.set(used)
