"""Runs journaled transfer jobs through the copy engine: bounded concurrency, retries with
backoff, resume after a restart, prompt cancel, and progress fanned out to watchers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

from servicekit import metrics
from servicekit.logs import context_id
from transfer_service.endpoints import EndpointStore
from transfer_service.jobs import JobRecord, JobSpec, JobState, Journal, Progress
from transfer_service.retry import describe_error, is_retryable, registry_error_code

log = logging.getLogger("transfer_service.worker")

# A watcher that sees nothing new for this long re-reads the journal (belt and braces).
_WATCH_POLL_SECONDS = 5.0


def effective_tag(spec: JobSpec) -> str:
    """The destination tag: the one asked for, else the source tag (a digest source: none)."""
    if spec.dst_tag:
        return spec.dst_tag
    return "" if ":" in spec.src_reference else spec.src_reference


class Worker:
    """Executes jobs from the journal; one instance per journal."""

    def __init__(
        self,
        journal: Journal,
        endpoints: EndpointStore,
        engine: Any,
        *,
        max_jobs: int = 4,
        max_attempts: int = 5,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        progress_interval: float = 1.0,
    ) -> None:
        self._journal = journal
        self._endpoints = endpoints
        self._engine = engine
        self._max_jobs = max_jobs
        self._max_attempts = max_attempts
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._progress_interval = progress_interval
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
        for job in resumed:
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
        self._enqueue(job_id)
        self._update_active_gauge()

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
            try:
                await self._run(job_id)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("transfer %s: unexpected failure of the runner", job_id)

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
                "",
                progress=Progress.of(getattr(result, "progress", None) or live.progress),
                digest=str(getattr(result, "digest", "") or ""),
                media_type=str(getattr(result, "media_type", "") or ""),
            )
            if done is not None:
                log.info("transfer %s: done (%s) in %.1fs", job_id, done.digest, seconds)
                self._final(done)
            return
        self._count_registry_error(live, exc)
        message = describe_error(exc)
        if is_retryable(exc) and live.attempts < self._max_attempts:
            delay = self._backoff(live.attempts)
            again = self._journal.retry_later(
                job_id, f"attempt {live.attempts} failed: {message}; retrying in {delay:.1f}s"
            )
            if again is not None:
                log.warning("transfer %s: %s; retry in %.1fs", job_id, message, delay)
                self._publish(again)
                self._update_active_gauge()
                loop = asyncio.get_running_loop()
                self._retry_handles[job_id] = loop.call_later(delay, self._requeue, job_id)
            return
        if is_retryable(exc):
            message = f"gave up after {live.attempts} attempts: {message}"
        done = self._journal.finish(job_id, JobState.ERROR, message, progress=live.progress)
        if done is not None:
            log.warning("transfer %s: error: %s", job_id, message)
            self._final(done)

    def _requeue(self, job_id: str) -> None:
        self._retry_handles.pop(job_id, None)
        self._enqueue(job_id)

    def _backoff(self, attempts: int) -> float:
        delay = min(self._backoff_max, self._backoff_base * 2 ** max(0, attempts - 1))
        return delay * random.uniform(0.8, 1.2)

    def _final(self, job: JobRecord) -> None:
        metrics.TRANSFERS.labels(state=job.state.value).inc()
        self._publish(job)
        self._update_active_gauge()

    async def _copy(self, job: JobRecord) -> Any:
        from transfer_service.engine import CopyRequest

        spec = job.spec
        on_progress = self._progress_callback(job.id)
        async with (
            self._endpoints.client_for(spec.src_endpoint) as src,
            self._endpoints.client_for(spec.dst_endpoint) as dst,
        ):
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

