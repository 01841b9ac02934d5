"""Follow each started transfer to its end and record the run's final state."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import grpc
from mirror.v1 import gateway_pb2, transfer_pb2, transfer_pb2_grpc

from gateway.leases import DEFAULT_LEASE_S
from gateway.runs import RunRecord, RunStore
from gateway.tasks import KeyedTasks
from servicekit import metrics
from servicekit.logs import context_id
from servicekit.retry import Backoff, transient_rpc_error

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
    """One task per running run: WatchTransfer, falling back to polling GetTransfer.

    Replicas share the runs: a run's transfer is followed by the replica that claimed it
    (`runs.tracked_by`, a lease renewed while it follows). A run whose replica died is
    adopted by another within the lease time; a run is finished (and notified) once even
    when two replicas saw its transfer end.
    """

    def __init__(
        self,
        stub: transfer_pb2_grpc.TransferServiceStub,
        runs: RunStore,
        on_final: Callable[[RunRecord], Awaitable[None]],
        poll_s: float = 1.0,
        before_success: Callable[[str, transfer_pb2.Transfer], Awaitable[object]] | None = None,
        *,
        owner: str = "local",
        lease_s: float = DEFAULT_LEASE_S,
    ) -> None:
        self.stub = stub
        self.runs = runs
        self.db = runs.db
        self.on_final = on_final
        self.poll_s = poll_s
        # Awaited before a run is recorded SUCCEEDED (errors retry the whole check).
        self.before_success = before_success
        self.owner = owner
        self.lease_s = lease_s
        self._tasks = KeyedTasks()
        # Runs being recorded final: finished even when their follow task is cancelled.
        self._settling: set[asyncio.Task[None]] = set()

    async def track(self, run: RunRecord) -> bool:
        """Follow `run` here when this replica gets its claim (idempotent); False when
        another replica follows it."""
        if not run.transfer_id:
            return False
        if run.id in self._tasks:
            return True
        if not await self.db.run(self.runs.claim_tracking, run.id, self.owner, self.lease_s):
            return False
        run_id, transfer_id = run.id, run.transfer_id
        self._tasks.spawn(run_id, lambda: self._follow(run_id, transfer_id))
        return True

    async def adopt(self) -> int:
        """Follow the RUNNING runs no replica follows (at start: every one a restart left;
        later: those of a replica that died). Returns how many were taken here."""
        taken = 0
        for run_id in await self.db.run(self.runs.untracked):
            rec = await self.db.run(self.runs.get, run_id)
            if rec is not None and rec.state == Run.STATE_RUNNING and await self.track(rec):
                taken += 1
        return taken

    async def maintain_forever(self) -> None:
        """Renew the claims of the runs followed here (stop following those another replica
        took meanwhile) and adopt orphaned runs, every third of the lease."""
        context_id.set("tracking")
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                await self.maintain()
            except Exception as exc:
                log.warning("renewing the claims of tracked runs failed: %s", exc)

    async def maintain(self) -> None:
        mine = self._tasks.keys()
        if mine:
            held = await self.db.run(self.runs.renew_tracking, self.owner, mine, self.lease_s)
            for run_id in set(mine) - held:
                # Finished meanwhile, or another replica took it over: stop following here.
                log.info("run %s is no longer followed here", run_id)
                self._tasks.cancel(run_id)
        adopted = await self.adopt()
        if adopted:
            log.info("following %d running transfer(s) no replica followed", adopted)

    @property
    def active(self) -> int:
        return len(self._tasks)

    async def stop(self) -> None:
        await self._tasks.stop()
        if self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)

    async def _follow(self, run_id: str, transfer_id: str) -> None:
        """Watch the transfer to its end and record the run. A call that may pass later (the
        transfer service down or busy) is retried on the backoff, for as long as it takes;
        any other error ends the follow with the run FAILED, saying why: a run is never left
        RUNNING behind a refusal that asking again cannot change."""
        backoff = Backoff(self.poll_s, 15.0)
        tries = 0
        while True:
            delay = backoff.delay(tries)
            tries += 1
            try:
                async for tr in self.stub.WatchTransfer(
                    transfer_pb2.WatchTransferRequest(id=transfer_id, final_only=True)
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
                code = err.code()
                if code == grpc.StatusCode.NOT_FOUND:
                    await self._record(
                        run_id, Run.STATE_FAILED, f"transfer {transfer_id} not found"
                    )
                    return
                if not transient_rpc_error(err):
                    log.warning(
                        "following transfer %s: %s: %s; not retried",
                        transfer_id, code.name, err.details(),
                    )
                    await self._record(
                        run_id,
                        Run.STATE_FAILED,
                        f"cannot follow transfer {transfer_id}: {code.name}: "
                        f"{(err.details() or '')[:300]} (not retried; GetTransfer "
                        f"{transfer_id} says how the copy itself ended)",
                    )
                    return
                log.info(
                    "watching transfer %s: %s; retrying in %.1fs",
                    transfer_id,
                    code.name,
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
            await self._record(
                run_id, Run.STATE_SUCCEEDED, f"mirrored to {dest}{said}", tr.digest
            )
        elif tr.state == T.STATE_SUPERSEDED:
            # A newer push of the source tag won; its own run mirrors it.
            await self._record(
                run_id, Run.STATE_SKIPPED, "superseded: " + (tr.message or "the tag moved on")
            )
        elif tr.state == T.STATE_CANCELED:
            await self._record(
                run_id, Run.STATE_FAILED, tr.message or "transfer canceled", tr.digest
            )
        else:
            await self._record(
                run_id, Run.STATE_FAILED, tr.message or "transfer failed", tr.digest
            )

    async def _record(self, run_id: str, state: int, message: str, digest: str = "") -> None:
        """Record the run's end and tell `on_final`, to the end even if this task is
        cancelled meanwhile (the stop of the gateway awaits it)."""
        task = asyncio.ensure_future(self._settle(run_id, state, message, digest))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)
        await asyncio.shield(task)

    async def _settle(self, run_id: str, state: int, message: str, digest: str) -> None:
        rec, changed = await self.db.run(
            self.runs.transition, run_id, state=state, message=message, src_digest=digest
        )
        if rec is None or not changed:
            return  # already final (another replica, or an earlier attempt, recorded it)
        count_run(rec)
        await self.on_final(rec)
