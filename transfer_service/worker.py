"""Runs journaled transfer jobs through the copy engine: bounded concurrency, retries with
backoff, resume after a restart, prompt cancel, and progress fanned out to watchers.

Scheduling rules (see docs/INTERFACES.md, Transfer service):
- jobs that write one destination tag (endpoint, repository, tag) run one at a time, in
  creation order, so the last one created (the newest push) writes last;
- at most `max_jobs_per_endpoint` running jobs read from one source endpoint, so a stalled
  source holds only its share of the `max_jobs` slots; with the default share (half), a
  source may use all slots but one while no other source has jobs parked (the one left free
  starts another source's job at once); a share set by the operator is a hard cap;
- a retryable failure is retried `max_attempts` times on a short backoff; then a job that
  could not reach its registry (or was asked to wait longer than the client's cap) is
  rescheduled: WAITING with `next_attempt_time` (stored), on a backoff growing up to
  `reschedule_max`. Permanent errors fail the job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from registry_client.errors import DigestMismatch
from servicekit import metrics
from servicekit.logs import context_id, fields
from servicekit.retry import Backoff, is_retryable, retry_after_hint
from transfer_service.diskfull import no_space_message
from transfer_service.endpoints import EndpointStore
from transfer_service.engine.referrers import summary as referrer_summary
from transfer_service.jobs import JobRecord, JobSpec, JobState, Journal, Progress
from transfer_service.retry import describe_error, registry_error_code
from transfer_service.source_tag import SourceTagMoved, tag_check

log = logging.getLogger("transfer_service.worker")

# A watcher that sees nothing new for this long re-reads the journal (belt and braces).
_WATCH_POLL_SECONDS = 5.0


def effective_tag(spec: JobSpec) -> str:
    """The destination tag: the one asked for, else the source tag (a digest source: none)."""
    if spec.dst_tag:
        return spec.dst_tag
    return "" if ":" in spec.src_reference else spec.src_reference


def destination_key(spec: JobSpec) -> tuple[str, str, str] | None:
    """(endpoint, repository, tag) the job writes; None for a copy by digest only."""
    tag = effective_tag(spec)
    return (spec.dst_endpoint, spec.dst_repository, tag) if tag else None


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


class Worker:
    """Executes jobs from the journal; one instance per journal."""

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
    ) -> None:
        self._journal = journal
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
        # Where ENOSPC is reported (the spool; the database lives beside it by default).
        self._volume = str(getattr(engine, "spool_dir", "") or Path.cwd())
        # Destination tag -> unfinished jobs writing it, oldest first; only the first runs.
        self._lanes: dict[tuple[str, str, str], list[str]] = {}
        self._lane_of: dict[str, tuple[str, str, str]] = {}
        self._lane_parked: set[str] = set()
        # Source endpoint -> running jobs reading from it, and jobs waiting for a slot of it.
        self._src_running: Counter[str] = Counter()
        self._slot_parked: dict[str, list[str]] = {}
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        # Jobs in the queue: a job is queued at most once (a StartTransfer racing the resume
        # at start-up must not run it twice).
        self._queued: set[str] = set()
        self._runners: list[asyncio.Task[None]] = []
        self._copies: dict[str, asyncio.Task[Any]] = {}
        # Set once the runner has recorded the outcome of a job's current attempt.
        self._concluded: dict[str, asyncio.Event] = {}
        self._cancel_requested: set[str] = set()
        self._live: dict[str, JobRecord] = {}
        self._watchers: dict[str, set[asyncio.Queue[JobRecord]]] = {}
        self._retry_handles: dict[str, asyncio.TimerHandle] = {}

    async def start(self) -> None:
        """Resume every unfinished job, then start the runners."""
        if self._runners:
            return
        resumed = self._journal.unfinished()
        now = time.time()
        for job in resumed:
            self._add_to_lane(job)
            if job.next_attempt_time is not None and job.next_attempt_time > now:
                self._schedule(job.id, job.next_attempt_time - now)
            else:
                self._enqueue(job.id)
        if resumed:
            log.info("resuming %d unfinished transfer(s)", len(resumed))
        self._runners = [
            asyncio.create_task(self._run_forever(), name=f"transfer-runner-{i}")
            for i in range(self._max_jobs)
        ]
        self._update_active_gauge()

    async def stop(self) -> None:
        """Stop the runners. Running jobs stay `running` in the journal and resume on start."""
        for handle in self._retry_handles.values():
            handle.cancel()
        self._retry_handles.clear()
        for t in self._runners:
            t.cancel()
        await asyncio.gather(*self._runners, return_exceptions=True)
        self._runners = []

    def submit(self, job_id: str) -> None:
        """Queue a job that the journal holds in `waiting`."""
        self._add_to_lane(self._journal.get(job_id))
        self._enqueue(job_id)
        self._update_active_gauge()

    def _add_to_lane(self, job: JobRecord) -> None:
        key = destination_key(job.spec)
        if key is None or job.id in self._lane_of:
            return
        lane = self._lanes.setdefault(key, [])
        lane.append(job.id)
        # Creation order (seq), whatever order submit() and the resume saw them in.
        seqs = {j: (self._journal.get(j).seq if j != job.id else job.seq) for j in lane}
        lane.sort(key=seqs.__getitem__)
        self._lane_of[job.id] = key

    def _leave_lane(self, job_id: str) -> None:
        """A job ended: the next job for its destination tag may run."""
        key = self._lane_of.pop(job_id, None)
        if key is None:
            return
        self._lane_parked.discard(job_id)
        lane = self._lanes.get(key, [])
        if job_id in lane:
            lane.remove(job_id)
        if not lane:
            self._lanes.pop(key, None)
        elif lane[0] in self._lane_parked:
            self._lane_parked.discard(lane[0])
            self._enqueue(lane[0])

    def _admit(self, job_id: str) -> str | None:
        """The source endpoint whose slot the job now holds, or None when it must not run
        yet (final already, an older job for its tag first, or its source's share in use)."""
        try:
            job = self._journal.get(job_id)
        except Exception:
            return None
        if job.state.final:
            self._leave_lane(job_id)
            self._wake_parked(job.spec.src_endpoint)  # it may have been woken for a slot
            return None
        key = self._lane_of.get(job_id)
        if key is not None and self._lanes[key][0] != job_id:
            self._lane_parked.add(job_id)  # queued again when the one before it ends
            self._wake_parked(job.spec.src_endpoint)
            self._note(
                job, f"waiting for transfer {self._lanes[key][0]}, which writes "
                f"{key[1]}:{key[2]} on {key[0]} first (one at a time per tag)",
            )
            return None
        src = job.spec.src_endpoint
        if self._src_running[src] >= self._slot_limit(src):
            self._slot_parked.setdefault(src, []).append(job_id)
            self._note(
                job, f"waiting for a job slot of source endpoint {src} "
                f"({self._slot_limit(src)} running at most)",
            )
            return None
        self._src_running[src] += 1
        return src

    def _note(self, job: JobRecord, message: str) -> None:
        """Record why a waiting job does not start yet (kept when it is already said, and
        never over a retry's message, which says more)."""
        if job.message and not job.message.startswith("waiting for "):
            return
        noted = self._journal.note_waiting(job.id, message)
        if noted is not None:
            self._publish(noted)

    def _free_slot(self, src: str) -> None:
        self._src_running[src] -= 1
        if self._src_running[src] <= 0:
            del self._src_running[src]
        self._wake_parked(src)

    def _slot_limit(self, src: str) -> int:
        """How many jobs of source `src` may run now: its share while other sources have jobs
        parked, else all slots but one (work-conserving, and another source's job never
        waits for a slot)."""
        others_waiting = any(q for other, q in self._slot_parked.items() if other != src)
        if others_waiting or self._hard_cap:
            return self._per_endpoint
        return max(self._per_endpoint, self._max_jobs - 1)

    def _wake_parked(self, src: str) -> None:
        """Queue again as many of the source's parked jobs as it has free slots, oldest first
        (waking all of them at every freed slot made a backlog of N jobs cost N² admissions)."""
        parked = self._slot_parked.get(src)
        if not parked:
            return
        free = self._slot_limit(src) - self._src_running.get(src, 0)
        while free > 0 and parked:
            self._enqueue(parked.pop(0))
            free -= 1
        if not parked:
            self._slot_parked.pop(src, None)

    def _schedule(self, job_id: str, delay: float) -> None:
        old = self._retry_handles.pop(job_id, None)
        if old is not None:
            old.cancel()
        loop = asyncio.get_running_loop()
        self._retry_handles[job_id] = loop.call_later(delay, self._requeue, job_id)

    def _enqueue(self, job_id: str) -> None:
        if job_id in self._queued or job_id in self._copies:
            return
        self._queued.add(job_id)
        self._queue.put_nowait(job_id)

    def snapshot(self, job_id: str) -> JobRecord:
        """The job as the journal has it, with the live counters of a running job."""
        live = self._live.get(job_id)
        return live if live is not None else self._journal.get(job_id)

    async def cancel(self, job_id: str, wait: float = 30.0) -> JobRecord:
        """Cancel a waiting or running job; a final job is returned unchanged."""
        job = self._journal.get(job_id)
        if job.state.final:
            return job
        task = self._copies.get(job_id)
        if task is not None:
            self._cancel_requested.add(job_id)
            concluded = self._concluded[job_id]
            task.cancel()
            # The runner records CANCELED once the engine has removed its spool files.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(concluded.wait(), wait)
            return self._journal.get(job_id)
        handle = self._retry_handles.pop(job_id, None)
        if handle is not None:
            handle.cancel()
        done = self._journal.finish(job_id, JobState.CANCELED, "canceled by request")
        if done is None:
            # It was picked up (or finished) meanwhile: cancel it the running way.
            if job_id in self._copies:
                return await self.cancel(job_id, wait)
            return self._journal.get(job_id)
        self._final(done)
        return done

    async def watch(self, job_id: str) -> AsyncIterator[JobRecord]:
        """The current snapshot at once, then each change, ending after the final state."""
        q: asyncio.Queue[JobRecord] = asyncio.Queue(maxsize=1)
        self._watchers.setdefault(job_id, set()).add(q)
        try:
            last = self.snapshot(job_id)
            yield last
            while not last.state.final:
                try:
                    # asyncio.timeout: wait_for on 3.11 can swallow the cancel of a watcher
                    # that went away just as a snapshot arrived.
                    async with asyncio.timeout(_WATCH_POLL_SECONDS):
                        snap = await q.get()
                except TimeoutError:
                    snap = self.snapshot(job_id)
                    if snap == last:
                        continue
                last = snap
                yield snap
        finally:
            qs = self._watchers.get(job_id)
            if qs is not None:
                qs.discard(q)
                if not qs:
                    del self._watchers[job_id]

    # -- internals ------------------------------------------------------------------------

    def _publish(self, job: JobRecord) -> None:
        for q in self._watchers.get(job.id, ()):
            # Latest wins: a slow watcher skips intermediate snapshots, never the final one.
            if q.full():
                q.get_nowait()
            q.put_nowait(job)

    async def _run_forever(self) -> None:
        while True:
            job_id = await self._queue.get()
            self._queued.discard(job_id)
            src = self._admit(job_id)
            if src is None:
                continue
            try:
                with fields(transfer=job_id):
                    await self._run(job_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                full = no_space_message(exc, self._volume)
                if full is not None:
                    # The journal could not record the outcome; a restart resumes the job.
                    log.error("transfer %s: %s; the outcome was not recorded", job_id, full)
                else:
                    log.exception("transfer %s: unexpected failure of the runner", job_id)
            finally:
                self._free_slot(src)

    async def _run(self, job_id: str) -> None:
        job = self._journal.start_attempt(job_id)
        if job is None:
            return  # canceled (or finished) while it waited
        token = context_id.set(job_id)
        self._live[job_id] = job
        self._publish(job)
        self._update_active_gauge()
        log.info(
            "transfer %s: attempt %d: %s/%s:%s -> %s/%s",
            job_id, job.attempts, job.spec.src_endpoint, job.spec.src_repository,
            job.spec.src_reference, job.spec.dst_endpoint, job.spec.dst_repository,
        )
        started = time.monotonic()
        copy = asyncio.create_task(self._copy(job), name=f"transfer-{job_id}")
        self._copies[job_id] = copy
        concluded = self._concluded[job_id] = asyncio.Event()
        flusher = asyncio.create_task(self._flush_progress(job_id))
        try:
            try:
                await asyncio.wait([copy])
            except asyncio.CancelledError:
                # The service is stopping: leave the job `running` so a restart resumes it.
                copy.cancel()
                await asyncio.gather(copy, return_exceptions=True)
                self._save_live(job_id)
                raise
            finally:
                flusher.cancel()
                self._copies.pop(job_id, None)
                live = self._live.pop(job_id, job)
            self._conclude(job_id, copy, live, time.monotonic() - started)
        finally:
            self._concluded.pop(job_id, None)
            concluded.set()
            self._update_spool_gauge()
            context_id.reset(token)

    def _conclude(
        self, job_id: str, copy: asyncio.Task[Any], live: JobRecord, seconds: float
    ) -> None:
        cancel_requested = job_id in self._cancel_requested
        self._cancel_requested.discard(job_id)
        if copy.cancelled() or (cancel_requested and copy.exception() is not None):
            done = self._journal.finish(
                job_id, JobState.CANCELED, "canceled by request", progress=live.progress
            )
            if done is not None:
                log.info("transfer %s: canceled", job_id)
                self._final(done)
            return
        exc = copy.exception()
        if exc is None:
            result = copy.result()
            metrics.COPY_SECONDS.observe(seconds)
            done = self._journal.finish(
                job_id,
                JobState.DONE,
                referrer_summary(result, live.spec.copy_referrers),
                progress=Progress.of(getattr(result, "progress", None) or live.progress),
                digest=str(getattr(result, "digest", "") or ""),
                media_type=str(getattr(result, "media_type", "") or ""),
                referrers=list(getattr(result, "referrers", None) or []),
            )
            if done is not None:
                log.info("transfer %s: done (%s) in %.1fs", job_id, done.digest, seconds)
                self._final(done)
            return
        assert exc is not None
        if isinstance(exc, SourceTagMoved):
            done = self._journal.finish(
                job_id, JobState.SUPERSEDED, str(exc), progress=live.progress, digest=exc.copied
            )
            if done is not None:
                log.info("transfer %s: %s", job_id, exc)
                self._final(done)
            return
        self._count_registry_error(live, exc)
        full = no_space_message(exc, self._volume)
        message = full or describe_error(exc)
        retryable = full is None and is_retryable(exc)
        asked = retry_after_hint(exc) if retryable else None
        if retryable and asked is None and live.round_attempts < self._max_attempts:
            delay = self._quick.delay(live.round_attempts - 1)
            again = self._journal.retry_later(
                job_id, f"attempt {live.attempts} failed: {message}; retrying in {delay:.1f}s"
            )
            if again is not None:
                log.warning("transfer %s: %s; retry in %.1fs", job_id, message, delay)
                self._publish(again)
                self._update_active_gauge()
                self._schedule(job_id, delay)
            return
        if retryable and not isinstance(exc, DigestMismatch):
            self._reschedule(live, exc, message, asked)
            return
        if retryable:
            message = f"gave up after {live.round_attempts} attempts: {message}"
        done = self._journal.finish(job_id, JobState.ERROR, message, progress=live.progress)
        if done is not None:
            log.warning("transfer %s: error: %s", job_id, message)
            self._final(done)

    def _reschedule(
        self, live: JobRecord, exc: BaseException, message: str, asked: float | None
    ) -> None:
        """Back to WAITING until a later time: the registry is unreachable (quick retries
        spent) or asked for a longer wait than the client honours."""
        registry = self._endpoint_of(live, getattr(exc, "registry", ""))
        if asked is not None:
            delay = min(max(asked, 1.0), self._long.cap)
            why = f"registry {registry} asked to wait {asked:.0f}s (Retry-After)"
        else:
            delay = self._long.ceiling(live.reschedules)
            why = f"registry {registry} failed {live.round_attempts} attempt(s) in a row"
        at = time.time() + delay
        again = self._journal.reschedule(
            live.id, f"{message}; {why}; next attempt at {_when(at)} (in {delay:.0f}s)", at
        )
        if again is not None:
            log.warning("transfer %s: rescheduled in %.0fs: %s", live.id, delay, again.message)
            self._publish(again)
            self._update_active_gauge()
            self._schedule(live.id, delay)

    def _requeue(self, job_id: str) -> None:
        self._retry_handles.pop(job_id, None)
        self._enqueue(job_id)

    def _final(self, job: JobRecord) -> None:
        self._leave_lane(job.id)
        metrics.TRANSFERS.labels(state=job.state.value).inc()
        self._publish(job)
        self._update_active_gauge()

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
                self._save_live(job_id)
                last = live

    def _save_live(self, job_id: str) -> None:
        live = self._live.get(job_id)
        if live is not None:
            self._journal.save_progress(job_id, live.progress, live.digest, live.media_type)

    def _count_registry_error(self, job: JobRecord, exc: BaseException) -> None:
        code = registry_error_code(exc)
        if code:
            registry = self._endpoint_of(job, getattr(exc, "registry", ""))
            metrics.REGISTRY_ERRORS.labels(registry=registry, code=code).inc()

    def _endpoint_of(self, job: JobRecord, host: str) -> str:
        """The endpoint name of the registry that answered (the transport records its host);
        errors raised above the transport (a digest mismatch found by the engine) do not say
        which side failed, so they name both endpoints."""
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

    def _update_active_gauge(self) -> None:
        counts = self._journal.count_by_state()
        for state in (JobState.WAITING, JobState.RUNNING):
            metrics.TRANSFERS_ACTIVE.labels(state=state.value).set(counts.get(state, 0))

