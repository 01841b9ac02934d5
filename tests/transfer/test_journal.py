"""Job journal: idempotency (also concurrent and across reopen), transitions, listing."""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
import pytest

from servicekit.errors import ApiError
from transfer_service.jobs import JobSpec, JobState, Journal, Progress
from transfer_service.schema import open_database

SPEC = JobSpec("dev", "team/app", "1.0", "qa", "team/app", "1.0")


def test_idempotency_key_survives_reopen(tmp_path: Path) -> None:
    db = open_database(tmp_path)
    job, created = Journal(db).create(SPEC, "key-1")
    assert created and job.state == JobState.WAITING
    db.close()
    again, created2 = Journal(open_database(tmp_path)).create(SPEC, "key-1")
    assert not created2 and again.id == job.id


def test_idempotency_key_concurrent_threads_make_one_job(tmp_path: Path) -> None:
    # Two Database objects on one file: as two processes would be.
    journals = [Journal(open_database(tmp_path)) for _ in range(2)]
    ids: list[str] = []
    lock = threading.Lock()

    def go(j: Journal) -> None:
        for _ in range(20):
            job, _ = j.create(SPEC, "same")
            with lock:
                ids.append(job.id)

    threads = [threading.Thread(target=go, args=(journals[i % 2],)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == 120 and len(set(ids)) == 1
    assert len(journals[0].list_page(100)) == 1


def test_same_key_other_parameters_is_invalid_argument(tmp_path: Path) -> None:
    j = Journal(open_database(tmp_path))
    j.create(SPEC, "k")
    other = JobSpec("dev", "team/app", "2.0", "qa", "team/app", "2.0")
    with pytest.raises(ApiError) as info:
        j.create(other, "k")
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.field_violations[0][0] == "idempotency_key"


def test_transitions_and_progress(tmp_path: Path) -> None:
    j = Journal(open_database(tmp_path))
    job, _ = j.create(SPEC)
    running = j.start_attempt(job.id)
    assert running is not None and running.state == JobState.RUNNING and running.attempts == 1
    j.save_progress(job.id, Progress(bytes_total=10, bytes_done=4, blobs_total=2), "sha256:ab")
    got = j.get(job.id)
    assert got.progress.bytes_done == 4 and got.digest == "sha256:ab"
    assert j.retry_later(job.id, "boom") is not None
    assert j.get(job.id).state == JobState.WAITING
    assert j.start_attempt(job.id).attempts == 2  # type: ignore[union-attr]
    done = j.finish(job.id, JobState.DONE, progress=Progress(bytes_total=10, bytes_done=10))
    assert done is not None and done.state == JobState.DONE and done.end_time
    # Final is final: no second transition, no new attempt.
    assert j.finish(job.id, JobState.CANCELED) is None
    assert j.start_attempt(job.id) is None
    assert j.unfinished() == []


def test_list_filters_and_order(tmp_path: Path) -> None:
    j = Journal(open_database(tmp_path))
    a, _ = j.create(SPEC)
    b, _ = j.create(JobSpec("dev", "other/x", "1", "prod", "other/x", "1"))
    c, _ = j.create(SPEC)
    j.start_attempt(c.id)
    assert [x.id for x in j.list_page(10)] == [c.id, b.id, a.id]
    assert [x.id for x in j.list_page(10, destination_endpoint="prod")] == [b.id]
    assert [x.id for x in j.list_page(10, repository="team/app")] == [c.id, a.id]
    assert [x.id for x in j.list_page(10, states=[JobState.RUNNING])] == [c.id]
    assert [x.id for x in j.list_page(10, before_seq=c.seq)] == [b.id, a.id]
    with pytest.raises(ApiError) as info:
        j.get("nope")
    assert info.value.code == grpc.StatusCode.NOT_FOUND
