"""Follow each started transfer to its end and record the run's final state."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import grpc
from mirror.v1 import gateway_pb2, transfer_pb2, transfer_pb2_grpc

from gateway.runs import RunRecord, RunStore
from gateway.tasks import KeyedTasks
from servicekit import metrics
from servicekit.retry import Backoff

log = logging.getLogger("gateway.tracker")

Run = gateway_pb2.Run
T = transfer_pb2.Transfer
_FINAL = {T.STATE_DONE, T.STATE_ERROR, T.STATE_CANCELED, T.STATE_SUPERSEDED}


def run_state_name(state: int) -> str:
    return Run.State.Name(state).removeprefix("STATE_").lower()  # type: ignore[arg-type]


def count_run(run: RunRecord) -> None:
    """Metrics of a run that reached its state: totals, per policy, last success time."""
    state = run_state_name(run.state)
    metrics.RUNS.labels(state).inc()
    metrics.POLICY_RUNS.labels(run.policy_name or run.policy_id, state).inc()
    if run.state == Run.STATE_SUCCEEDED:
        metrics.POLICY_LAST_SUCCESS.labels(run.policy_name or run.policy_id).set(
            run.end_time or run.update_time
        )


class TransferTracker:
    """One task per running run: WatchTransfer, falling back to polling GetTransfer."""

    def __init__(
        self,
        stub: transfer_pb2_grpc.TransferServiceStub,
        runs: RunStore,
        on_final: Callable[[RunRecord], None],
        poll_s: float = 1.0,
        before_success: Callable[[str, transfer_pb2.Transfer], Awaitable[object]] | None = None,
    ) -> None:
        self.stub = stub
        self.runs = runs
        self.on_final = on_final
        self.poll_s = poll_s
        # Awaited before a run is recorded SUCCEEDED (errors retry the whole check).
        self.before_success = before_success
        self._tasks = KeyedTasks()

    def track(self, run: RunRecord) -> None:
        """Start following `run` (idempotent)."""
        if run.transfer_id:
            run_id, transfer_id = run.id, run.transfer_id
            self._tasks.spawn(run_id, lambda: self._follow(run_id, transfer_id))

    def resume(self) -> int:
        """After a restart: follow every run still RUNNING."""
        running = self.runs.in_states([Run.STATE_RUNNING])
        for run in running:
            self.track(run)
        return len(running)

    @property
    def active(self) -> int:
        return len(self._tasks)

    async def stop(self) -> None:
        await self._tasks.stop()

    async def _follow(self, run_id: str, transfer_id: str) -> None:
        backoff = Backoff(self.poll_s, 15.0)
        tries = 0
        while True:
            delay = backoff.delay(tries)
            tries += 1
            try:
                async for tr in self.stub.WatchTransfer(
                    transfer_pb2.WatchTransferRequest(id=transfer_id)
                ):
                    if tr.state in _FINAL:
                        await self._finish(run_id, tr)
                        return
                # The stream ended without a final state: ask directly.
                tr = await self.stub.GetTransfer(
                    transfer_pb2.GetTransferRequest(id=transfer_id), timeout=10
                )
                if tr.state in _FINAL:
                    await self._finish(run_id, tr)
                    return
            except grpc.aio.AioRpcError as err:
                if err.code() == grpc.StatusCode.NOT_FOUND:
                    self._record(run_id, Run.STATE_FAILED, f"transfer {transfer_id} not found")
                    return
                log.info(
                    "watching transfer %s: %s; retrying in %.1fs",
                    transfer_id,
                    err.code().name,
                    delay,
                )
            await asyncio.sleep(delay)

    async def _finish(self, run_id: str, tr: transfer_pb2.Transfer) -> None:
        if tr.state == T.STATE_DONE:
            if self.before_success is not None:
                await self.before_success(run_id, tr)
            d = tr.destination
            dest = f"{d.repository}:{d.tag} on endpoint {d.endpoint}"
            # A done transfer's message says which referrers it copied or could not (issue 13).
            said = f"; {tr.message}" if tr.message else ""
            self._record(run_id, Run.STATE_SUCCEEDED, f"mirrored to {dest}{said}", tr.digest)
        elif tr.state == T.STATE_SUPERSEDED:
            # A newer push of the source tag won; its own run mirrors it.
            self._record(
                run_id, Run.STATE_SKIPPED, "superseded: " + (tr.message or "the tag moved on")
            )
        elif tr.state == T.STATE_CANCELED:
            self._record(run_id, Run.STATE_FAILED, tr.message or "transfer canceled", tr.digest)
        else:
            self._record(run_id, Run.STATE_FAILED, tr.message or "transfer failed", tr.digest)

    def _record(self, run_id: str, state: int, message: str, digest: str = "") -> None:
        before = self.runs.get(run_id)
        rec = self.runs.update(run_id, state=state, message=message, src_digest=digest)
        if rec is None or before is None or before.state == rec.state:
            return
        count_run(rec)
        self.on_final(rec)
