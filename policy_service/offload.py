"""Evaluate's work kept off the event loop, with a deadline, and a rate per caller.

Evaluating stored policies is cheap for the facts an image usually has (microseconds), but
its cost grows with the facts: 32 in-budget regexes explained over 150,000 components (a
3 MB message, under the 4 MiB limit) take seconds of CPU. Anyone who may call Evaluate (a
read-only token) may send such facts, so:

- small work (the facts' size times the policies evaluated, under `INLINE_WORK`) runs inline,
  as before: that is the common case, and a hop to a thread would double its cost;
- larger work from the **service** caller (the admin token the other services present; every
  caller when the server has no tokens, as then nobody can be told apart and every caller may
  do anything) runs in a thread of its own, so the loop keeps serving. Its deadline is the
  call's (at most `SERVICE_DEADLINE`); past it the call fails and the thread stops at the next
  policy (one policy's evaluation is bounded by the compiler's budgets and the message size);
- larger work from **any other** caller runs in a rule worker process (policy_service.rules.
  isolation: the policies compiled there from their stored records), killed at its deadline
  (MIRROR_EVALUATE_DEADLINE, default 5 s) or past its memory ceiling; and those callers are
  rate-limited (MIRROR_EVALUATE_RATE per caller, default 20/second, as rule checks are).

Each kind of work has its own slots (MIRROR_EVALUATE_WORKERS each, default 2): a caller
flooding the server with large facts can keep the others' large evaluations waiting, never
the service's, nor anyone's small ones. Running out of the deadline, the memory or a slot is
RESOURCE_EXHAUSTED: it depends on the server's load, so a later retry may pass.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta

import grpc
from grpc import aio
from mirror.v1 import common_pb2, policy_pb2

from policy_service import compiled, evaluation
from policy_service.compiled import CompiledPolicy
from policy_service.freshness import FactQuality
from policy_service.rules.isolation import (
    OverDeadline,
    Overloaded,
    OverMemory,
    RuleWorkers,
    WorkerDied,
)
from policy_service.signature_gate import SignatureGate
from policy_service.store import PolicyRecord
from policy_service.templates import TemplateError
from servicekit import auth, errors
from servicekit.ratelimit import CallerRateLimit

log = logging.getLogger("policy_service.offload")

# Bytes of facts times policies evaluated that stay inline: the bench's request (~330 bytes,
# ~11 policies) is 10x under it; at the costliest rules the compiler allows (32 regexes over
# every component) this much work is ~75 ms, typical rules take a few.
INLINE_WORK = 32 << 10
# More components than this go off the loop without measuring the facts (ByteSize walks
# them: ~10 ms for 3 MB).
INLINE_ITEMS = 1000
DEFAULT_RATE = "20/second"
DEFAULT_DEADLINE = 5.0
DEFAULT_MEMORY_MB = 256
DEFAULT_WORKERS = 2
# The longest a service call's evaluation may run, whatever deadline the call has.
SERVICE_DEADLINE = 60.0
BUSY_RETRY_SECONDS = 1.0


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def work_of(f: common_pb2.ImageFacts, n_policies: int) -> int:
    """A cheap measure of an evaluation's cost: the facts' bytes times the policies."""
    if n_policies == 0:
        return 0  # nothing to evaluate: the facts are not even converted
    if len(f.components) > INLINE_ITEMS:
        return INLINE_WORK + 1  # large anyway: no need to walk the facts to say so
    return f.ByteSize() * n_policies


@dataclass(slots=True)
class Job:
    """One Evaluate's work, as much of it as does not need the server's state (not frozen:
    this is built per Evaluate, and a frozen dataclass costs more to build)."""

    facts: common_pb2.ImageFacts
    kinds: Collection[int]
    verified: Sequence[common_pb2.SignatureFact]
    explain: bool
    when: datetime  # renders tags
    max_vulnerability_age: timedelta
    now: float  # data age is measured against the clock, not `when`
    signature_wait_us: int


class Stopped(Exception):
    """The call is over (past its deadline, or cancelled): the evaluation stops here."""


def evaluate_all(
    policies: Sequence[CompiledPolicy], job: Job, stop: threading.Event | None = None
) -> list[policy_pb2.PolicyResult]:
    """The policies' results for the job's facts (signature reasons and waits included).
    `stop`, when set, ends the work before the next policy (raises Stopped)."""
    facts = evaluation.facts_from_proto(job.facts, job.kinds, job.verified)
    present = evaluation.present_kinds(job.facts)
    quality = FactQuality.of(job.facts, present, job.max_vulnerability_age, job.now)
    rendered: dict[tuple[str, str], str | TemplateError] = {}
    results = []
    for p in policies:
        if stop is not None and stop.is_set():
            raise Stopped
        results.append(evaluation.evaluate_policy(
            p, facts, present, job.explain, job.when, rendered, quality
        ))
    if job.verified or common_pb2.FACT_KIND_SIGNATURES in job.kinds:
        # Only `amend` is used: it needs the default wait, not the keys.
        gate = SignatureGate(None, job.signature_wait_us)  # type: ignore[arg-type]
        for p, r in zip(policies, results, strict=True):
            gate.amend(r, p, facts, job.verified)
    return results


def evaluate_records(records: Sequence[PolicyRecord], job: Job) -> list[policy_pb2.PolicyResult]:
    """Rule worker job: compile the stored policies here (compiled rules cannot cross a
    process boundary), then evaluate them as the server would."""
    return evaluate_all([compiled.compile_policy(r, strict=False) for r in records], job)


class EvaluationGuard:
    """Where one Evaluate's work runs; see the module docstring."""

    def __init__(self, tokens: Collection[auth.Token] = (), *, rate: str | None = None,
                 deadline: float | None = None, memory_mb: int | None = None,
                 workers: int | None = None) -> None:
        self._auth = auth.TokenAuthenticator(tokens) if tokens else None
        rate = _env("MIRROR_EVALUATE_RATE", DEFAULT_RATE) if rate is None else rate
        self.rate_limit = CallerRateLimit(rate, "evaluations") if rate else None
        slots = workers or int(_env("MIRROR_EVALUATE_WORKERS", str(DEFAULT_WORKERS)))
        self.deadline = deadline or float(_env("MIRROR_EVALUATE_DEADLINE",
                                               str(DEFAULT_DEADLINE)))
        # Processes for callers other than the service; the server's fork server (started by
        # the rule guard) already holds the policy modules.
        self.workers = RuleWorkers(
            concurrency=slots, deadline=self.deadline,
            memory_bytes=(memory_mb or int(_env("MIRROR_EVALUATE_MEMORY_MB",
                                                str(DEFAULT_MEMORY_MB)))) << 20,
            preload=("policy_service.offload",),
        )
        # Threads for the service's large evaluations: they use the compiled policies.
        self._threads = ThreadPoolExecutor(slots, thread_name_prefix="evaluate")
        self._thread_slots: asyncio.Semaphore | None = None
        self._slots = slots

    def is_service(self, context: aio.ServicerContext) -> bool:
        """The caller presents an admin token (what services present to each other), or the
        server has no tokens at all."""
        if self._auth is None:
            return True
        token = auth.bearer_token(context.invocation_metadata())
        return token is not None and self._auth.role_of(token) == auth.Role.ADMIN

    def admit(self, context: aio.ServicerContext) -> bool:
        """Count the call against its caller's rate (RESOURCE_EXHAUSTED with a RetryInfo when
        over it); the service is not limited. Returns whether the caller is the service."""
        if self.is_service(context):
            return True
        if self.rate_limit is not None:
            self.rate_limit.check_call(context)
        return False

    async def run(
        self, service: bool, policies: Sequence[CompiledPolicy], job: Job,
        context: aio.ServicerContext,
    ) -> list[policy_pb2.PolicyResult]:
        """The results of large work: a thread for the service, a worker for the others."""
        if service:
            left = context.time_remaining()
            limit = SERVICE_DEADLINE if left is None else min(SERVICE_DEADLINE, left)
            return await self._in_thread(policies, job, limit)
        return await self._in_worker(policies, job)

    async def _in_thread(
        self, policies: Sequence[CompiledPolicy], job: Job, limit: float
    ) -> list[policy_pb2.PolicyResult]:
        started = time.monotonic()
        if self._thread_slots is None:
            self._thread_slots = asyncio.Semaphore(self._slots)
        slots = self._thread_slots
        try:
            await asyncio.wait_for(slots.acquire(), limit)
        except TimeoutError:
            raise self._busy() from None
        stop = threading.Event()
        try:
            future = asyncio.get_running_loop().run_in_executor(
                self._threads, evaluate_all, policies, job, stop
            )
        except BaseException:
            slots.release()
            raise
        # The slot is free when the thread is, not when the call gives up on it.
        future.add_done_callback(lambda _f: slots.release())
        left = max(0.0, limit - (time.monotonic() - started))
        try:
            return await asyncio.wait_for(asyncio.shield(future), left)
        except TimeoutError:
            stop.set()
            log.warning("evaluation of %d policies stopped at its deadline of %.3g s",
                        len(policies), limit)
            raise self._over_deadline(limit) from None
        except asyncio.CancelledError:
            stop.set()  # the caller is gone: stop at the next policy
            raise

    async def _in_worker(
        self, policies: Sequence[CompiledPolicy], job: Job
    ) -> list[policy_pb2.PolicyResult]:
        w = self.workers
        try:
            return await w.run(evaluate_records, [p.record for p in policies], job)
        except Overloaded as exc:
            log.warning("evaluation refused: %s", exc)
            raise self._busy() from None
        except OverDeadline:
            log.warning("evaluation of %d policies stopped at its deadline of %g s",
                        len(policies), w.deadline)
            raise self._over_deadline(w.deadline) from None
        except OverMemory:
            log.warning("evaluation stopped at its memory ceiling of %d MiB",
                        w.memory_bytes >> 20)
            raise errors.resource_exhausted(
                f"evaluating the policies over these facts needed more than "
                f"{w.memory_bytes >> 20} MiB; it was stopped (send fewer facts)",
                reason="EVALUATION_MEMORY_EXCEEDED",
            ) from None
        except WorkerDied as exc:
            log.error("evaluation worker died: %s", exc)
            raise errors.ApiError(grpc.StatusCode.INTERNAL,
                                  "the evaluation failed unexpectedly") from None

    def _busy(self) -> errors.ApiError:
        return errors.resource_exhausted(
            f"the server is busy evaluating other large requests ({self._slots} at once); "
            f"retry in {BUSY_RETRY_SECONDS:g} s",
            retry_after=BUSY_RETRY_SECONDS, reason="EVALUATIONS_BUSY",
        )

    @staticmethod
    def _over_deadline(limit: float) -> errors.ApiError:
        return errors.resource_exhausted(
            f"evaluating the policies over these facts took longer than {limit:.3g} s; it was "
            "stopped (send fewer facts)",
            reason="EVALUATION_DEADLINE_EXCEEDED",
        )

    def close(self) -> None:
        self.workers.close()
        self._threads.shutdown(wait=False, cancel_futures=True)
