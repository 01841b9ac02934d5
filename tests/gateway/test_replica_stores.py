"""What replicas share, on both engines: claims with a lease on events, runs and owed scans,
singleton leases, and writes two replicas may race on (each store opened twice, as two
replicas open one database)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from mirror.v1 import gateway_pb2

from gateway.baselines import BaselineStore
from gateway.dest_scan import CLAIMS as SCAN_CLAIMS
from gateway.inbox import DONE, Inbox, InboxEvent
from gateway.leases import Duties, LeaseStore, SharedLocks
from gateway.runs import RunRecord, RunStore
from gateway.schema import open_database
from gateway.subscriptions import SubscriptionStore
from servicekit.db import Database

Run = gateway_pb2.Run


@pytest.fixture
def two(tmp_path: Path, db_target: str) -> Iterator[tuple[Database, Database]]:
    """One database opened by two replicas (two connections, or two pools)."""
    a = open_database(tmp_path, db_target)
    b = open_database(tmp_path, db_target)
    yield a, b
    a.close()
    b.close()


def wait_until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def event(eid: str, tag: str, received: float) -> InboxEvent:
    return InboxEvent(
        id=eid,
        trigger=Run.TRIGGER_EVENT,
        repository="dev/app",
        tag=tag,
        digest="",
        received_at=received,
        endpoint="dev",
    )


def run_rec(event_id: str, policy: str = "p1") -> RunRecord:
    return RunRecord(
        id="",
        policy_id=policy,
        policy_name="p",
        event_id=event_id,
        trigger=Run.TRIGGER_EVENT,
        src_endpoint="dev",
        src_repository="dev/app",
        src_tag="1.0",
        src_digest="sha256:" + "a" * 64,
        dst_endpoint="qa",
        dst_repository="qa/app",
        dst_tag="1.0",
        state=Run.STATE_PENDING,
    )


def test_an_event_received_by_two_replicas_is_stored_once(two: tuple[Database, Database]) -> None:
    a, b = Inbox(two[0]), Inbox(two[1])
    assert a.add_many([event("e1", "1.0", 1.0)]) == [True]
    assert b.add_many([event("e1", "1.0", 2.0), event("e2", "2.0", 2.0)]) == [False, True]
    assert a.depth() == 2 and b.counts() == {"pending": 2}


def test_each_event_is_claimed_by_one_replica_and_one_per_tag(
    two: tuple[Database, Database],
) -> None:
    a, b = Inbox(two[0]), Inbox(two[1])
    a.add_many([event("t1-old", "1.0", 1.0), event("t1-new", "1.0", 2.0),
                event("t2", "2.0", 3.0), event("t3", "3.0", 4.0)])
    got_a = a.claim_due("replica-a", 30.0, 2)
    # Oldest first; the second event of tag 1.0 waits for the first wherever it runs.
    assert [e.id for e in got_a] == ["t1-old", "t2"]
    got_b = b.claim_due("replica-b", 30.0, 10)
    assert [e.id for e in got_b] == ["t3"]
    assert b.claim_due("replica-b", 30.0, 10) == []
    # The first of the tag done: the next one of that tag can be claimed.
    a.finish("t1-old", DONE)
    assert [e.id for e in b.claim_due("replica-b", 30.0, 10)] == ["t1-new"]
    # Renewing: only what a replica holds is renewed.
    assert a.renew_claims("replica-a", ["t2", "t3", "t1-new"], 30.0) == {"t2"}


def test_the_claim_of_a_replica_that_died_runs_out_and_another_takes_the_event(
    two: tuple[Database, Database],
) -> None:
    a, b = Inbox(two[0]), Inbox(two[1])
    a.add_many([event("e1", "1.0", 1.0)])
    assert [e.id for e in a.claim_due("replica-a", 0.5, 5)] == ["e1"]
    assert b.claim_due("replica-b", 0.5, 5) == []  # held
    nxt = b.next_due_time()
    assert nxt is not None and nxt > time.time() - 1  # when the claim runs out
    taken: list[InboxEvent] = []

    def claimed_by_b() -> bool:
        taken.extend(b.claim_due("replica-b", 30.0, 5))
        return bool(taken)

    wait_until(claimed_by_b)
    assert [e.id for e in taken] == ["e1"]
    # The dead replica's renewal fails: the event is no longer its.
    assert a.renew_claims("replica-a", ["e1"], 30.0) == set()
    # A retry gives the claim back, due again after the delay.
    b.retry_later("e1", 0.0, "try again")
    (again,) = a.claim_due("replica-a", 30.0, 5)
    assert again.attempts == 1 and again.message == "try again"


def test_a_run_is_created_once_when_two_replicas_act_on_one_event(
    two: tuple[Database, Database],
) -> None:
    a, b = RunStore(two[0]), RunStore(two[1])
    mine, theirs = run_rec("e1"), run_rec("e1")
    first = a.upsert_started(mine)
    second = b.upsert_started(theirs)
    assert first is mine and second is not theirs and second.id == first.id
    assert [r.id for r in b.by_event("e1")] == [first.id]


def test_a_run_is_finished_once_when_two_replicas_see_its_transfer_end(
    two: tuple[Database, Database],
) -> None:
    a, b = RunStore(two[0]), RunStore(two[1])
    rec = a.upsert_started(run_rec("e1"))
    a.update(rec.id, state=Run.STATE_RUNNING, transfer_id="t1")
    done, changed = a.transition(rec.id, state=Run.STATE_SUCCEEDED, message="mirrored")
    assert changed and done is not None and done.state == Run.STATE_SUCCEEDED
    late, changed = b.transition(rec.id, state=Run.STATE_FAILED, message="late")
    assert not changed and late is not None and late.message == "mirrored"


def test_a_running_run_is_tracked_by_one_replica_and_adopted_when_it_dies(
    two: tuple[Database, Database],
) -> None:
    a, b = RunStore(two[0]), RunStore(two[1])
    rec = a.upsert_started(run_rec("e1"))
    assert a.untracked() == []  # only RUNNING runs are tracked
    a.update(rec.id, state=Run.STATE_RUNNING, transfer_id="t1")
    assert b.untracked() == [rec.id]
    assert a.claim_tracking(rec.id, "replica-a", 0.5)
    assert not b.claim_tracking(rec.id, "replica-b", 30.0)
    assert b.untracked() == []
    assert a.renew_tracking("replica-a", [rec.id], 0.5) == {rec.id}
    wait_until(lambda: b.untracked() == [rec.id])  # replica-a stopped renewing
    assert b.claim_tracking(rec.id, "replica-b", 30.0)
    assert a.renew_tracking("replica-a", [rec.id], 30.0) == set()
    b.update(rec.id, state=Run.STATE_SUCCEEDED)
    assert not a.claim_tracking(rec.id, "replica-a", 30.0)  # finished: nothing to follow


def test_an_owed_scan_is_claimed_once(two: tuple[Database, Database]) -> None:
    a, b = two
    a.execute(
        "INSERT INTO destination_scans (run_id, endpoint, repository, digest, state,"
        " create_time) VALUES ('r1', 'qa', 'qa/app', 'sha256:x', 'pending', 1)"
    )
    assert SCAN_CLAIMS.orphans(b, 10) == ["r1"]
    assert SCAN_CLAIMS.claim(a, "r1", "replica-a", 30.0)
    assert not SCAN_CLAIMS.claim(b, "r1", "replica-b", 30.0)
    assert SCAN_CLAIMS.orphans(b, 10) == []


def test_a_lease_has_one_holder_until_it_runs_out_or_is_released(
    two: tuple[Database, Database],
) -> None:
    a, b = LeaseStore(two[0], "replica-a"), LeaseStore(two[1], "replica-b")
    assert a.acquire("reconcile", 0.5)
    assert not b.acquire("reconcile", 0.5)
    assert a.acquire("reconcile", 0.5)  # renewed
    assert b.acquire("polls", 30.0)
    assert a.holders() == {"polls": "replica-b", "reconcile": "replica-a"}
    wait_until(lambda: b.acquire("reconcile", 30.0))  # replica-a stopped renewing
    assert not a.acquire("reconcile", 30.0)
    b.release("reconcile")
    assert a.acquire("reconcile", 30.0)


async def test_a_duty_runs_on_the_replica_holding_its_lease_and_moves_when_it_stops(
    two: tuple[Database, Database],
) -> None:
    ran: dict[str, int] = {"a": 0, "b": 0}

    def duty(name: str) -> Callable[[], object]:
        async def loop() -> None:
            while True:
                ran[name] += 1
                await asyncio.sleep(0.01)

        return loop

    first = Duties(LeaseStore(two[0], "replica-a"), lease_s=0.6)
    second = Duties(LeaseStore(two[1], "replica-b"), lease_s=0.6)
    first.add("reconcile", duty("a"))  # type: ignore[arg-type]
    second.add("reconcile", duty("b"))  # type: ignore[arg-type]
    await first.start()
    await second.start()
    try:
        assert first.held == ["reconcile"] and second.held == []
        await asyncio.sleep(0.3)  # a couple of renewals: it stays where it is
        assert second.held == [] and ran["b"] == 0 and ran["a"] > 0
        await first.stop()  # releases the lease: taken over at the next round
        deadline = time.monotonic() + 5
        while second.held != ["reconcile"] or not ran["b"]:
            assert time.monotonic() < deadline, "the duty did not move"
            await asyncio.sleep(0.02)
    finally:
        await second.stop()


def test_baselines_and_flag_subscriptions_written_by_two_replicas_stay_one(
    two: tuple[Database, Database],
) -> None:
    a, b = BaselineStore(two[0]), BaselineStore(two[1])
    a.record("p1", 5.0, [("dev/app", "1.0", "sha256:1")])
    b.record("p1", 5.0, [("dev/app", "1.0", "sha256:1"), ("dev/app", "2.0", "sha256:2")])
    assert a.contains("p1", 5.0, "dev/app", "1.0", "sha256:1")
    assert not b.contains("p1", 5.0, "dev/app", "2.0", "sha256:2")  # the first one stands
    urls = ["http://127.0.0.1:9/hook"]
    SubscriptionStore(two[0]).sync_flag_urls(urls)
    SubscriptionStore(two[1]).sync_flag_urls(urls)
    (sub,) = SubscriptionStore(two[1]).all()
    assert sub.origin == "flag" and not sub.has_secret


def test_signature_waits_end_once(two: tuple[Database, Database]) -> None:
    a, b = RunStore(two[0]), RunStore(two[1])
    a.wait_for_signature("r1", 1.0, "unsigned")
    a.wait_for_signature("r1", 2.0, "still unsigned")  # replaced, not duplicated
    assert b.waits_over(3.0) == [("r1", "still unsigned")]
    assert a.end_wait("r1") and not b.end_wait("r1")


async def test_a_shared_lock_is_held_by_one_replica_at_a_time(
    two: tuple[Database, Database],
) -> None:
    a = SharedLocks(LeaseStore(two[0], "replica-a"), lease_s=0.6)
    b = SharedLocks(LeaseStore(two[1], "replica-b"), lease_s=0.6)
    order: list[str] = []

    async def hold(locks: SharedLocks, who: str, gate: asyncio.Event | None) -> None:
        async with locks.hold("decide:p1/dev/app:1.0"):
            order.append(f"{who} in")
            if gate is not None:
                await gate.wait()  # held past its lease: renewed meanwhile
            order.append(f"{who} out")

    gate = asyncio.Event()
    first = asyncio.create_task(hold(a, "a", gate))
    while order != ["a in"]:
        await asyncio.sleep(0.01)
    second = asyncio.create_task(hold(b, "b", None))
    await asyncio.sleep(1.0)  # longer than the lease: b still waits
    assert order == ["a in"]
    gate.set()
    await asyncio.gather(first, second)
    assert order == ["a in", "a out", "b in", "b out"]
    assert LeaseStore(two[0], "x").holders() == {}  # released, not left to run out
