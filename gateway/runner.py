"""Act on one pushed image: facts -> Evaluate -> StartTransfer per matching policy -> runs."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from mirror.v1 import (
    common_pb2,
    gateway_pb2,
    policy_pb2,
    policy_pb2_grpc,
    transfer_pb2,
    transfer_pb2_grpc,
)

from gateway.facts import TRANSIENT_CODES, FactGatherer, ImageRef
from gateway.runs import RunRecord, RunStore
from gateway.tracker import TransferTracker, run_state_name
from servicekit import metrics

log = logging.getLogger("gateway.runner")

Run = gateway_pb2.Run
RPC_TIMEOUT_S = 30.0
SWEEP_TRIGGERS = frozenset({Run.TRIGGER_APPLY, Run.TRIGGER_RECONCILE})
ACTIVE_OR_DONE = frozenset({Run.STATE_PENDING, Run.STATE_RUNNING, Run.STATE_SUCCEEDED})


class TransientError(Exception):
    """A dependency is unavailable right now: try the whole event again later."""


@dataclass(frozen=True)
class Push:
    """An image to act on: where it is and which event (or sweep) brought it."""

    event_id: str
    trigger: int
    endpoint: str
    repository: str
    tag: str
    digest: str
    # Tag templates render with this time, so a replayed event renders the same tag.
    evaluation_time: float


def explain(result: policy_pb2.PolicyResult) -> str:
    """Why a policy did not match: the reason plus every clause that evaluated false."""
    parts = []
    if result.reason:
        parts.append(result.reason)
    failed = [c for c in result.explanation.clauses if not c.result]
    if failed:
        parts.append(
            "failed clauses: "
            + "; ".join(f"{c.clause} (value: {c.value})" if c.value else c.clause for c in failed)
        )
    if result.explanation.missing_facts:
        names = [
            common_pb2.FactKind.Name(k).removeprefix("FACT_KIND_").lower()
            for k in result.explanation.missing_facts
        ]
        parts.append("missing facts: " + ", ".join(names))
    return "; ".join(parts) or "the rule did not match"


class Runner:
    """Turns a Push into runs; shared by the inbox worker, ApplyPolicy and Reconcile."""

    def __init__(
        self,
        policy: policy_pb2_grpc.PolicyServiceStub,
        transfer: transfer_pb2_grpc.TransferServiceStub,
        gatherer: FactGatherer,
        runs: RunStore,
        tracker: TransferTracker,
    ) -> None:
        self.policy = policy
        self.transfer = transfer
        self.gatherer = gatherer
        self.runs = runs
        self.tracker = tracker
        # One decision at a time per (policy, source image): an event and a sweep never both
        # start a transfer for the same thing.
        self._locks: defaultdict[tuple[str, ...], asyncio.Lock] = defaultdict(asyncio.Lock)

    async def act(self, push: Push, only_policy: str = "") -> list[RunRecord]:
        """Evaluate and act; returns the runs (new or, on a replay, the ones recorded before).

        Raises TransientError when a dependency is unavailable (the caller retries later).
        """
        try:
            return await self._act(push, only_policy)
        except grpc.aio.AioRpcError as err:
            if err.code() in TRANSIENT_CODES:
                raise TransientError(f"{err.code().name}: {err.details()}") from err
            raise

    async def _act(self, push: Push, only_policy: str) -> list[RunRecord]:
        req = await self.policy.GetFactRequirements(
            policy_pb2.GetFactRequirementsRequest(repository=push.repository),
            timeout=RPC_TIMEOUT_S,
        )
        if req.policy_count == 0:
            return []
        facts = await self._facts(push, set(req.kinds))
        when = Timestamp()
        when.FromNanoseconds(int(push.evaluation_time * 1e9))
        resp = await self.policy.Evaluate(
            policy_pb2.EvaluateRequest(facts=facts, explain=True, evaluation_time=when),
            timeout=RPC_TIMEOUT_S,
        )
        digest = facts.digest or push.digest
        out: list[RunRecord] = []
        for result in resp.results:
            if only_policy and result.policy_id != only_policy:
                continue
            rec = await self._one(push, digest, result)
            if rec is not None:
                out.append(rec)
        return out

    async def _facts(self, push: Push, kinds: set[int]) -> common_pb2.ImageFacts:
        ref = ImageRef(push.endpoint, push.repository, push.tag, push.digest)
        try:
            if not ref.digest:
                # NotifyPush without a digest: pin what the tag names now.
                ref = ImageRef(ref.endpoint, ref.repository, ref.tag,
                               await self.gatherer.resolve_digest(ref))
            return await self.gatherer.gather(ref, kinds)
        except grpc.aio.AioRpcError:
            raise
        except Exception as exc:
            # Registry unreachable, manifest gone... retried; the worker gives up eventually.
            what = f"{push.repository}:{push.tag}"
            raise TransientError(f"cannot read facts of {what}: {exc}") from exc

    async def _one(
        self, push: Push, digest: str, result: policy_pb2.PolicyResult
    ) -> RunRecord | None:
        base = RunRecord(
            id="",
            policy_id=result.policy_id,
            policy_name=result.policy_name,
            event_id=push.event_id,
            trigger=push.trigger,
            src_endpoint=push.endpoint,
            src_repository=push.repository,
            src_tag=push.tag,
            src_digest=digest,
            dst_endpoint=result.target.endpoint,
            dst_repository=result.target.repository,
            dst_tag=result.tag,
            state=Run.STATE_PENDING,
        )
        key = (result.policy_id, push.endpoint, push.repository, push.tag, digest)
        async with self._locks[key]:
            try:
                cover = self._covering(push, digest, result)
                if cover is not None:
                    return cover
                if not result.matched:
                    base.state = Run.STATE_NOT_MATCHED
                    base.message = explain(result)
                rec = self.runs.upsert_started(base)
                if rec is base and rec.state == Run.STATE_NOT_MATCHED:
                    metrics.RUNS.labels(run_state_name(rec.state)).inc()
                if rec.state == Run.STATE_PENDING:
                    rec = await self._start(push, digest, rec)
                if rec.state == Run.STATE_RUNNING:
                    self.tracker.track(rec)
                return rec
            finally:
                if not self._locks[key].locked():
                    self._locks.pop(key, None)

    def _covering(
        self, push: Push, digest: str, result: policy_pb2.PolicyResult
    ) -> RunRecord | None:
        """For sweeps: the run of this policy that already handles this image, if any.

        Reconcile leaves alone whatever a run covers (except failures, which it retries);
        Apply re-evaluates tags that did not match before but never mirrors twice.
        """
        if push.trigger not in SWEEP_TRIGGERS or not digest:
            return None
        runs = self.runs.covering(
            result.policy_id, push.endpoint, push.repository, push.tag, digest
        )
        if push.trigger == Run.TRIGGER_RECONCILE:
            keep = [r for r in runs if r.state != Run.STATE_FAILED]
        else:
            keep = [r for r in runs if r.state in ACTIVE_OR_DONE]
        return keep[-1] if keep else None

    async def restart_pending(self) -> int:
        """After a crash between recording a sweep's run and starting its transfer: start it.

        Event runs need nothing here (their event is still pending and replays); sweeps have
        no inbox row, so their PENDING runs are restarted with the same idempotency key.
        """
        started = 0
        for rec in self.runs.in_states([Run.STATE_PENDING]):
            if rec.trigger not in SWEEP_TRIGGERS:
                continue
            push = Push(
                event_id=rec.event_id,
                trigger=rec.trigger,
                endpoint=rec.src_endpoint,
                repository=rec.src_repository,
                tag=rec.src_tag,
                digest=rec.src_digest,
                evaluation_time=rec.create_time,
            )
            try:
                rec = await self._start(push, rec.src_digest, rec)
            except grpc.aio.AioRpcError as err:
                log.warning("cannot restart run %s yet: %s", rec.id, err.code().name)
                continue
            if rec.state == Run.STATE_RUNNING:
                self.tracker.track(rec)
            started += 1
        return started

    async def _start(self, push: Push, digest: str, rec: RunRecord) -> RunRecord:
        req = transfer_pb2.StartTransferRequest(
            source=common_pb2.ImageLocation(
                endpoint=push.endpoint,
                repository=push.repository,
                # By digest: mirror exactly what was pushed even if the tag moved since.
                reference=digest or push.tag,
            ),
            destination=transfer_pb2.TransferDestination(
                endpoint=rec.dst_endpoint, repository=rec.dst_repository, tag=rec.dst_tag
            ),
            # Same event + same policy = same job, across redeliveries and restarts.
            idempotency_key=f"{rec.event_id}/{rec.policy_id}",
        )
        try:
            tr = await self.transfer.StartTransfer(req, timeout=RPC_TIMEOUT_S)
        except grpc.aio.AioRpcError as err:
            if err.code() in TRANSIENT_CODES:
                raise
            msg = f"cannot start the transfer: {err.code().name}: {err.details()}"
            failed = self.runs.update(rec.id, state=Run.STATE_FAILED, message=msg)
            assert failed is not None
            metrics.RUNS.labels("failed").inc()
            self.tracker.on_final(failed)
            return failed
        updated = self.runs.update(
            rec.id, state=Run.STATE_RUNNING, message="transfer started", transfer_id=tr.id
        )
        assert updated is not None
        return updated
