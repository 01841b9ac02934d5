"""The tracker follows a run's transfer to its end, and never leaves the run RUNNING forever
(issue 10, one retry policy): a call to the transfer service that may pass later is retried
on the shared backoff; a refusal that asking again cannot change ends the follow with the run
FAILED, saying why; a follow that crashed is taken up again once its claim runs out.

A real grpc.aio transfer service double on a loopback port answers WatchTransfer and
GetTransfer as each test scripts it; the runs live in a real gateway database (SQLite).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from grpc import aio
from mirror.v1 import gateway_pb2, transfer_pb2, transfer_pb2_grpc

from gateway.runs import RunRecord, RunStore
from gateway.schema import open_database
from gateway.tracker import TransferTracker
from servicekit.server import RunningServer, start_server

Run = gateway_pb2.Run
T = transfer_pb2.Transfer
R = TypeVar("R")
DIGEST = "sha256:" + "c" * 64


@dataclass
class TransferDouble(transfer_pb2_grpc.TransferServiceServicer):
    """WatchTransfer and GetTransfer: each call takes the next scripted answer (a status code
    to abort with, or a transfer state to send); the last answer repeats."""

    script: list[grpc.StatusCode | int]
    calls: list[str] = field(default_factory=list)

    service_name = transfer_pb2.DESCRIPTOR.services_by_name["TransferService"].full_name

    def mount(self, server: aio.Server) -> None:
        transfer_pb2_grpc.add_TransferServiceServicer_to_server(self, server)

    def _next(self, method: str) -> grpc.StatusCode | int:
        self.calls.append(method)
        return self.script.pop(0) if len(self.script) > 1 else self.script[0]

    def _transfer(self, request_id: str, state: int) -> transfer_pb2.Transfer:
        return T(
            id=request_id, state=state, digest=DIGEST,  # type: ignore[arg-type]
            destination=transfer_pb2.TransferDestination(
                endpoint="qa", repository="qa/web", tag="1.0"
            ),
        )

    async def WatchTransfer(  # type: ignore[override]
        self, request: transfer_pb2.WatchTransferRequest, context: aio.ServicerContext
    ) -> AsyncIterator[transfer_pb2.Transfer]:
        answer = self._next("WatchTransfer")
        if isinstance(answer, grpc.StatusCode):
            await context.abort(answer, f"scripted {answer.name}")
        else:
            yield self._transfer(request.id, answer)

    async def GetTransfer(
        self, request: transfer_pb2.GetTransferRequest, context: aio.ServicerContext
    ) -> transfer_pb2.Transfer:
        answer = self._next("GetTransfer")
        if isinstance(answer, grpc.StatusCode):
            await context.abort(answer, f"scripted {answer.name}")
        return self._transfer(request.id, int(answer))


@dataclass
class Rig:
    double: TransferDouble
    runs: RunStore
    tracker: TransferTracker
    finals: list[RunRecord]

    async def running(self) -> RunRecord:
        """A RUNNING run whose transfer is t-1, followed by the tracker."""
        rec = await self.runs.db.run(self.runs.upsert_started, RunRecord(
            id="", policy_id="p1", policy_name="web", event_id="e1",
            trigger=Run.TRIGGER_EVENT, src_endpoint="dev", src_repository="dev/web",
            src_tag="1.0", src_digest=DIGEST, dst_endpoint="qa", dst_repository="qa/web",
            dst_tag="1.0", state=Run.STATE_PENDING,
        ))
        got = await self.runs.db.run(
            self.runs.update, rec.id, state=Run.STATE_RUNNING, transfer_id="t-1"
        )
        assert got is not None
        return got

    async def state(self, run_id: str) -> RunRecord:
        got = await self.runs.db.run(self.runs.get, run_id)
        assert got is not None
        return got


@pytest.fixture
async def rig_for(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Rig]]]:
    """`await rig_for(script, lease_s=...)`: the double serving `script`, a tracker polling
    every 50 ms with lease `lease_s`."""
    servers: list[RunningServer] = []
    channels: list[aio.Channel] = []
    trackers: list[TransferTracker] = []
    dbs: list[Any] = []

    async def make(script: list[grpc.StatusCode | int], lease_s: float = 15.0) -> Rig:
        # Only the two RPCs the tracker calls are implemented (the others answer UNIMPLEMENTED).
        double = TransferDouble(list(script))  # type: ignore[abstract]
        server = await start_server([double], "127.0.0.1:0")
        servers.append(server)
        channel = aio.insecure_channel(f"127.0.0.1:{server.port}")
        channels.append(channel)
        db = open_database(tmp_path / f"gw{len(dbs)}", "")
        dbs.append(db)
        runs = RunStore(db)
        finals: list[RunRecord] = []

        async def on_final(rec: RunRecord) -> None:
            finals.append(rec)

        tracker = TransferTracker(
            transfer_pb2_grpc.TransferServiceStub(channel), runs, on_final, poll_s=0.05,
            lease_s=lease_s,
        )
        trackers.append(tracker)
        return Rig(double, runs, tracker, finals)

    yield make
    for t in trackers:
        await t.stop()
    for c in channels:
        await c.close()
    for s in servers:
        await s.stop(0)
    for db in dbs:
        db.close()


async def until(what: str, fn: Callable[[], Awaitable[R | None]], timeout: float = 20) -> R:
    deadline = time.monotonic() + timeout
    while True:
        got = await fn()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        await asyncio.sleep(0.02)


async def test_a_transient_outage_is_retried_until_the_transfer_ends(
    rig_for: Callable[..., Awaitable[Rig]],
) -> None:
    rig = await rig_for([grpc.StatusCode.UNAVAILABLE] * 3 + [T.STATE_DONE])
    run = await rig.running()
    assert await rig.tracker.track(run)

    async def ended() -> RunRecord | None:
        rec = await rig.state(run.id)
        return rec if rec.state != Run.STATE_RUNNING else None

    rec = await until("the run to end", ended)
    assert rec.state == Run.STATE_SUCCEEDED, rec.message
    assert rec.message.startswith("mirrored to qa/web:1.0")
    assert rig.double.calls.count("WatchTransfer") == 4  # three refusals, then the answer
    assert [r.id for r in rig.finals] == [run.id]


@pytest.mark.parametrize("code", [
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.INVALID_ARGUMENT,
])
async def test_a_refusal_that_cannot_pass_later_fails_the_run_with_its_reason(
    rig_for: Callable[..., Awaitable[Rig]], code: grpc.StatusCode
) -> None:
    rig = await rig_for([code])
    run = await rig.running()
    assert await rig.tracker.track(run)

    async def ended() -> RunRecord | None:
        rec = await rig.state(run.id)
        return rec if rec.state != Run.STATE_RUNNING else None

    rec = await until("the run to end", ended, timeout=10)
    assert rec.state == Run.STATE_FAILED
    assert f"cannot follow transfer t-1: {code.name}: scripted {code.name}" in rec.message
    assert "not retried" in rec.message
    # Asked once, then no more: the follow ended.
    await until("the follow task to end", lambda: asyncio.sleep(0, rig.tracker.active == 0))
    asked = len(rig.double.calls)
    await asyncio.sleep(0.3)  # six poll intervals: a retry loop would have asked again
    assert asked == 1 and len(rig.double.calls) == 1, rig.double.calls
    assert [r.state for r in rig.finals] == [Run.STATE_FAILED]


async def test_a_follow_that_crashed_is_taken_up_again_when_its_claim_runs_out(
    rig_for: Callable[..., Awaitable[Rig]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recording the end fails once (the database was away): the follow task dies with the
    run RUNNING; the tracker's maintenance adopts the run once the claim expires, follows it
    again, and records it."""
    rig = await rig_for([T.STATE_DONE], lease_s=0.6)
    run = await rig.running()
    real = rig.runs.transition
    failed: list[str] = []

    def flaky(run_id: str, **kw: Any) -> tuple[RunRecord | None, bool]:
        if not failed:
            failed.append(run_id)
            raise OSError("database unavailable")
        return real(run_id, **kw)

    monkeypatch.setattr(rig.runs, "transition", flaky)
    maintain = asyncio.create_task(rig.tracker.maintain_forever())
    try:
        assert await rig.tracker.track(run)

        async def ended() -> RunRecord | None:
            rec = await rig.state(run.id)
            return rec if rec.state != Run.STATE_RUNNING else None

        rec = await until("the adopted run to end", ended)
    finally:
        maintain.cancel()
        await asyncio.gather(maintain, return_exceptions=True)
    assert failed == [run.id]
    assert rec.state == Run.STATE_SUCCEEDED, rec.message
    assert rig.double.calls.count("WatchTransfer") == 2  # the crashed follow, the adopted one

