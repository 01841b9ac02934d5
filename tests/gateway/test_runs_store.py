"""Run history: one run per (event, policy), paging, last status (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from mirror.v1 import gateway_pb2

from gateway.runs import RunRecord, RunStore
from gateway.schema import open_database
from servicekit.errors import ApiError

Run = gateway_pb2.Run


def rec(event: str, policy: str = "p1", state: int = Run.STATE_PENDING) -> RunRecord:
    return RunRecord(
        id="",
        policy_id=policy,
        policy_name="name",
        event_id=event,
        trigger=Run.TRIGGER_EVENT,
        src_endpoint="dev",
        src_repository="dev/website",
        src_tag=f"{event}-stable",
        src_digest="sha256:" + "b" * 64,
        dst_endpoint="qa",
        dst_repository="qa/website",
        dst_tag="20260101-000000",
        state=state,
    )


@pytest.fixture
def store(tmp_path: Path, db_target: str) -> Iterator[RunStore]:
    """On both engines: SQLite under tmp_path, and a fresh PostgreSQL database."""
    db = open_database(tmp_path, db_target)
    yield RunStore(db)
    db.close()


def test_a_replayed_event_keeps_its_first_run(store: RunStore) -> None:
    first = store.upsert_started(rec("e1"))
    again = rec("e1")
    again.dst_tag = "another-tag"
    second = store.upsert_started(again)
    assert second.id == first.id and second.dst_tag == "20260101-000000"
    assert len(store.by_event("e1")) == 1
    # Another policy on the same event is another run.
    assert store.upsert_started(rec("e1", policy="p2")).id != first.id


def test_final_state_is_not_overwritten(store: RunStore) -> None:
    r = store.upsert_started(rec("e1"))
    store.update(r.id, state=Run.STATE_RUNNING, transfer_id="t1")
    done = store.update(r.id, state=Run.STATE_SUCCEEDED, message="ok")
    assert done is not None and done.end_time is not None
    late = store.update(r.id, state=Run.STATE_FAILED, message="late")
    assert late is not None and late.state == Run.STATE_SUCCEEDED and late.message == "ok"
    proto = store.get(r.id).to_proto()  # type: ignore[union-attr]
    assert proto.transfer_id == "t1" and proto.HasField("end_time")


def test_list_pages_newest_first_and_filters(store: RunStore) -> None:
    for i in range(5):
        state = Run.STATE_NOT_MATCHED if i % 2 else Run.STATE_PENDING
        store.upsert_started(rec(f"e{i}", state=state))
    store.upsert_started(rec("x", policy="other"))
    page1, tok = store.list("p1", [], 2, "")
    assert [r.event_id for r in page1] == ["e4", "e3"] and tok
    page2, tok2 = store.list("p1", [], 2, tok)
    page3, tok3 = store.list("p1", [], 2, tok2)
    assert [r.event_id for r in page2 + page3] == ["e2", "e1", "e0"] and tok3 == ""
    nm, _ = store.list("p1", [Run.STATE_NOT_MATCHED], 10, "")
    assert [r.event_id for r in nm] == ["e3", "e1"]
    with pytest.raises(ApiError) as exc:
        store.list("other", [], 2, tok)
    assert exc.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_policy_status_is_the_last_run_with_counts(store: RunStore) -> None:
    assert store.policy_status("p1").last_state == Run.STATE_UNSPECIFIED
    a = store.upsert_started(rec("a"))
    store.update(a.id, state=Run.STATE_FAILED, message="boom")
    b = store.upsert_started(rec("b"))
    store.update(b.id, state=Run.STATE_SUCCEEDED, message="mirrored")
    st = store.policy_status("p1")
    assert st.last_state == Run.STATE_SUCCEEDED and st.last_message == "mirrored"
    assert (st.runs_total, st.runs_succeeded, st.runs_failed) == (2, 1, 1)
    assert st.HasField("last_success_time") and st.HasField("last_failure_time")
    assert st.last_run.id == b.id
