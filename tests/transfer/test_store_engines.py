"""The transfer service's stores on both engines (SQLite file, PostgreSQL schema `transfer`):
endpoints with encrypted secrets, the job journal, claims under leases, lanes, retry times in
the row, cancel requests, worker heartbeats and the migration of v3 rows."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from cryptography.fernet import Fernet

from servicekit.db import Database
from servicekit.errors import ApiError
from transfer_service.endpoints import EndpointRecord, EndpointStore
from transfer_service.jobs import JobRecord, JobSpec, JobState, Journal, Progress
from transfer_service.schema import MIGRATIONS, SCHEMA, open_database
from transfer_service.secrets import SecretBox, SecretKeyError

T = TypeVar("T")
SPEC = JobSpec("dev", "team/app", "1.0", "qa", "team/app", "rel")


@pytest.fixture
def db(db_target: str, tmp_path: Path) -> Iterator[Database]:
    d = open_database(tmp_path / "data", db_target)
    yield d
    d.close()


def _until(fn: Callable[[], T | None], timeout: float, what: str) -> T:
    """fn() once it is not None (polled until a deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got is not None:
            return got
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        time.sleep(0.02)


def test_endpoints_keep_encrypted_secrets(db: Database) -> None:
    key = Fernet.generate_key()
    store = EndpointStore(db, SecretBox([key]))
    store.create(EndpointRecord(
        name="qa", url="https://qa.example:5000", username="bot", secret="pw-1",
        aliases=("qa.internal:5000",), webhook_secret="w" * 20, max_concurrency=4,
        requests_per_second=2.5, insecure_skip_verify=True,
    ))
    store.create(EndpointRecord(name="dev", url="http://dev.example"))
    got = store.get("qa")
    assert (got.secret, got.webhook_secret) == ("pw-1", "w" * 20)
    assert got.aliases == ("qa.internal:5000",)
    assert got.insecure_skip_verify and got.max_concurrency == 4 and got.requests_per_second == 2.5
    assert [e.name for e in store.list(10)] == ["dev", "qa"]
    assert [e.name for e in store.list(10, after="dev")] == ["qa"]
    raw = db.query_one("SELECT secret_enc FROM endpoints WHERE name = ?", ("qa",))
    assert raw is not None and b"pw-1" not in bytes(raw["secret_enc"])
    assert store.verify_webhook_secret("qa", "w" * 20) == (True, True)
    with pytest.raises(ApiError) as dup:
        store.create(EndpointRecord(name="other", url="http://qa.example:5000"))
    assert dup.value.code == grpc.StatusCode.ALREADY_EXISTS
    # A URL naming another registry clears the secret given for the old one.
    moved = store.update("qa", {"url": "https://elsewhere.example"})
    assert not moved.has_secret and store.get("qa").username == "bot"
    store.update("qa", {"secret": "pw-2"})
    assert store.config_for("qa").password == "pw-2"
    with pytest.raises(SecretKeyError):
        EndpointStore(db, SecretBox([Fernet.generate_key()])).check_key()
    EndpointStore(db, SecretBox([key])).check_key()
    store.delete("dev")
    with pytest.raises(ApiError) as gone:
        store.get("dev")
    assert gone.value.code == grpc.StatusCode.NOT_FOUND


def test_registry_limits_are_divided_among_live_workers(db: Database) -> None:
    store = EndpointStore(db, SecretBox([Fernet.generate_key()]))
    store.create(EndpointRecord(name="lim", url="http://lim.example", max_concurrency=8,
                                requests_per_second=9.0))
    store.create(EndpointRecord(name="free", url="http://free.example"))
    assert (store.config_for("lim").max_concurrency,
            store.config_for("lim").requests_per_second) == (8, 9.0)
    store.live_workers = 3
    cfg = store.config_for("lim")
    assert (cfg.max_concurrency, cfg.requests_per_second) == (math.ceil(8 / 3), 3.0)
    # No limit set: the client's default per worker, nothing divided.
    assert (store.config_for("free").max_concurrency,
            store.config_for("free").requests_per_second) == (8, 0.0)


def test_journal_idempotency_transitions_and_listing(db: Database) -> None:
    j = Journal(db)
    job, created = j.create(SPEC, "key-1")
    again, created2 = j.create(SPEC, "key-1")
    assert created and not created2 and again.id == job.id
    with pytest.raises(ApiError) as other:
        j.create(JobSpec("dev", "team/app", "2.0", "qa", "team/app", "2.0"), "key-1")
    assert other.value.code == grpc.StatusCode.INVALID_ARGUMENT
    b, _ = j.create(JobSpec("dev", "other/x", "sha256:" + "a" * 64, "prod", "other/x"))
    running = j.claim("w1", 30)
    assert running is not None and running.id == job.id and running.attempts == 1
    assert running.state == JobState.RUNNING and running.lease_owner == "w1"
    assert j.save_progress(job.id, Progress(bytes_total=10, bytes_done=4), "sha256:ab", owner="w1")
    assert j.get(job.id).progress.bytes_done == 4 and j.get(job.id).digest == "sha256:ab"
    assert [x.id for x in j.list_page(10)] == [b.id, job.id]
    assert [x.id for x in j.list_page(10, destination_endpoint="prod")] == [b.id]
    assert [x.id for x in j.list_page(10, states=[JobState.RUNNING])] == [job.id]
    assert [x.id for x in j.list_page(10, before_seq=b.seq)] == [job.id]
    assert j.count_by_state() == {JobState.WAITING: 1, JobState.RUNNING: 1}
    done = j.finish(job.id, JobState.DONE, progress=Progress(bytes_total=10, bytes_done=10),
                    owner="w1")
    assert done is not None and done.end_time and j.finish(job.id, JobState.CANCELED) is None
    assert [x.id for x in j.unfinished()] == [b.id]


def test_claims_follow_lanes_leases_and_owners(db: Database) -> None:
    j = Journal(db)
    a, _ = j.create(SPEC)
    b, _ = j.create(JobSpec("dev", "team/app", "1.1", "qa", "team/app", "rel"))  # same tag
    c, _ = j.create(JobSpec("dev", "team/app", "1.2", "qa", "team/app", "other"))
    first = j.claim("w1", 30)
    second = j.claim("w2", 30)
    # B writes A's tag: it waits for A, wherever A runs.
    assert (first and first.id, second and second.id) == (a.id, c.id)
    assert j.claim("w2", 30) is None
    assert j.blocked(10) == [(j.get(b.id), a.id)]
    assert j.renew("w1", [a.id], 30).owned == {a.id}
    assert j.renew("w2", [a.id], 30).owned == frozenset()  # not its job
    # Writes of a job are its owner's only.
    assert not j.save_progress(a.id, Progress(bytes_done=1), owner="w2")
    assert j.finish(a.id, JobState.DONE, owner="w2") is None
    assert j.retry_later(a.id, "boom", owner="w2") is None
    assert j.finish(a.id, JobState.DONE, owner="w1") is not None
    nxt = j.claim("w2", 30)
    assert nxt is not None and nxt.id == b.id


def test_an_expired_lease_is_claimed_again_and_the_old_owner_writes_nothing(
    db: Database,
) -> None:
    j = Journal(db)
    job, _ = j.create(SPEC)
    assert j.claim("w1", 0.3) is not None
    assert j.claim("w2", 30) is None  # the lease holds
    taken = _until(lambda: j.claim("w2", 30), 10, "the lease expires")
    assert (taken.id, taken.lease_owner, taken.attempts) == (job.id, "w2", 2)
    assert j.renew("w1", [job.id], 30).owned == frozenset()
    assert not j.save_progress(job.id, Progress(bytes_done=5), owner="w1")
    assert j.finish(job.id, JobState.ERROR, "late", owner="w1") is None
    # release() ends a stopping worker's leases at once.
    assert j.release("w2") == 1
    back = j.claim("w3", 30)
    assert back is not None and back.lease_owner == "w3" and back.attempts == 3


def test_retry_and_reschedule_times_live_in_the_row(db: Database) -> None:
    j = Journal(db)
    job, _ = j.create(SPEC)
    j.claim("w1", 30)
    quick = j.retry_later(job.id, "attempt 1 failed", time.time() + 0.4, owner="w1")
    assert quick is not None and quick.next_attempt_time is not None and not quick.rescheduled
    assert j.claim("w2", 30) is None  # not before its time
    again = _until(lambda: j.claim("w2", 30), 10, "the retry time comes")
    assert again.attempts == 2 and again.next_attempt_time is None
    later = j.reschedule(job.id, "registry down", time.time() + 3600, owner="w2")
    assert later is not None and later.rescheduled and later.quick_base == 2
    assert j.get(job.id).rescheduled and j.claim("w1", 30) is None


def test_a_cancel_request_reaches_the_owner(db: Database) -> None:
    j = Journal(db)
    job, _ = j.create(SPEC)
    waiting, _ = j.create(JobSpec("dev", "team/app", "1.0", "qa", "team/app", "w"))
    j.claim("w1", 30)
    rec, now = j.cancel_or_request(job.id)
    assert not now and rec.state == JobState.RUNNING and rec.cancel_requested
    assert j.renew("w1", [job.id], 30).cancel == {job.id}
    # The owner's retry does not put it back to waiting.
    ended = j.retry_later(job.id, "attempt 1 failed", time.time(), owner="w1")
    assert ended is not None and ended.state == JobState.CANCELED
    # Nobody runs a waiting job: it is canceled at once.
    rec2, now2 = j.cancel_or_request(waiting.id)
    assert now2 and rec2.state == JobState.CANCELED and rec2.end_time
    with pytest.raises(ApiError):
        j.cancel_or_request("nope")


def test_live_workers_are_counted_from_heartbeats(db: Database) -> None:
    j = Journal(db)
    assert j.renew("w1", [], 30).live_workers == 1
    assert j.renew("w2", [], 30).live_workers == 2
    j.leave("w2")
    assert j.live_workers(30) == 1
    # A heartbeat older than the window no longer counts.
    assert _until(lambda: True if j.live_workers(0.2) == 0 else None, 10, "w1 ages")


def test_concurrent_claimers_take_each_job_once(db_target: str, tmp_path: Path) -> None:
    # Separate Database objects: as separate worker processes would be.
    dbs = [open_database(tmp_path / "data", db_target) for _ in range(3)]
    try:
        journal = Journal(dbs[0])
        ids = {journal.create(JobSpec("dev", "a", "1", "qa", "a", f"t{i}"))[0].id
               for i in range(30)}
        claimed: list[tuple[str, str]] = []
        lock = threading.Lock()

        def claim_all(n: int) -> None:
            mine = Journal(dbs[n])
            while (job := mine.claim(f"w{n}", 30)) is not None:
                with lock:
                    claimed.append((job.id, f"w{n}"))

        threads = [threading.Thread(target=claim_all, args=(n,)) for n in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(i for i, _ in claimed) == sorted(ids)  # each exactly once
        rows = dbs[0].query("SELECT id, lease_owner, attempts FROM jobs")
        assert {(r["id"], r["lease_owner"]) for r in rows} == set(claimed)
        assert {r["attempts"] for r in rows} == {1}
    finally:
        for d in dbs:
            d.close()


def test_v3_rows_migrate_with_their_lanes(db_target: str, tmp_path: Path) -> None:
    target: str | Path = db_target if "://" in db_target else Path(db_target)
    old = Database(target, MIGRATIONS[:3], schema=SCHEMA)
    now = time.time()
    cols = ("id, state, src_endpoint, src_repository, src_reference, dst_endpoint, "
            "dst_repository, dst_tag, create_time, attempts")
    old.execute(
        f"INSERT INTO jobs ({cols}) VALUES (?,?,?,?,?,?,?,?,?,?), (?,?,?,?,?,?,?,?,?,?), "
        "(?,?,?,?,?,?,?,?,?,?)",
        ("tagged", "running", "dev", "a", "1.0", "qa", "a", "rel", now, 1,
         "kept", "waiting", "dev", "a", "1.0", "qa", "a", "", now, 0,
         "digest", "done", "dev", "a", "sha256:" + "b" * 64, "qa", "a", "", now, 1),
    )
    old.close()
    db = open_database(tmp_path / "data", db_target)
    try:
        lanes = {r["id"]: r["lane_tag"] for r in db.query("SELECT id, lane_tag FROM jobs")}
        assert lanes == {"tagged": "rel", "kept": "1.0", "digest": ""}
        j = Journal(db)
        # The job left running by the old version has no lease: it is claimable at once.
        first = j.claim("w1", 30)
        assert first is not None and (first.id, first.attempts) == ("tagged", 2)
        assert j.get("digest").state == JobState.DONE
        assert isinstance(j.get("kept"), JobRecord)
    finally:
        db.close()
