"""Run history: one row per (event, policy), and each policy's last status."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf.timestamp_pb2 import Timestamp
from mirror.v1 import common_pb2, gateway_pb2

from servicekit.db import Database
from servicekit.paging import decode_token, encode_token, page_size

Run = gateway_pb2.Run
FINAL_STATES = frozenset(
    {
        Run.STATE_SUCCEEDED,
        Run.STATE_FAILED,
        Run.STATE_NOT_MATCHED,
        Run.STATE_BLOCKED,
        Run.STATE_SKIPPED,
    }
)
# (endpoint, repository, tag) of each place an image passed through before a run's source.
Hop = tuple[str, str, str]


@dataclass
class RunRecord:
    """A run as stored; `to_proto` gives the API message."""

    id: str
    policy_id: str
    policy_name: str
    event_id: str
    trigger: int
    src_endpoint: str
    src_repository: str
    src_tag: str
    src_digest: str
    dst_endpoint: str
    dst_repository: str
    dst_tag: str
    state: int
    message: str = ""
    transfer_id: str = ""
    create_time: float = 0.0
    update_time: float = 0.0
    end_time: float | None = None
    provenance: tuple[Hop, ...] = ()
    hop: int = 0
    cause: str = ""
    previous_digest: str = ""
    action: int = 0
    poll_id: str = ""

    def chain(self) -> tuple[Hop, ...]:
        """The provenance of a run triggered by this run's destination push."""
        return (*self.provenance, (self.src_endpoint, self.src_repository, self.src_tag))

    def to_proto(self) -> gateway_pb2.Run:
        r = gateway_pb2.Run(
            id=self.id,
            policy_id=self.policy_id,
            policy_name=self.policy_name,
            event_id=self.event_id,
            trigger=self.trigger,  # type: ignore[arg-type]
            source=common_pb2.ImageLocation(
                endpoint=self.src_endpoint,
                repository=self.src_repository,
                reference=self.src_tag,
            ),
            source_digest=self.src_digest,
            destination=common_pb2.Target(
                endpoint=self.dst_endpoint, repository=self.dst_repository
            ),
            destination_tag=self.dst_tag,
            state=self.state,  # type: ignore[arg-type]
            message=self.message,
            transfer_id=self.transfer_id,
            provenance=[
                common_pb2.ImageLocation(endpoint=e, repository=r, reference=t)
                for e, r, t in self.provenance
            ],
            hop=self.hop,
            cause=self.cause,
            previous_digest=self.previous_digest,
            action=self.action,  # type: ignore[arg-type]
            poll_id=self.poll_id,
        )
        r.create_time.CopyFrom(_ts(self.create_time))
        r.update_time.CopyFrom(_ts(self.update_time))
        if self.end_time is not None:
            r.end_time.CopyFrom(_ts(self.end_time))
        return r


def _ts(t: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(t * 1e9))
    return ts


_COLUMNS = (
    "id, policy_id, policy_name, event_id, trigger, src_endpoint, src_repository, src_tag,"
    " src_digest, dst_endpoint, dst_repository, dst_tag, state, message, transfer_id,"
    " create_time, update_time, end_time, provenance, hop, cause, previous_digest, action,"
    " poll_id"
)
_N_COLUMNS = _COLUMNS.count(",") + 1


def _record(row: sqlite3.Row) -> RunRecord:
    fields = {k: row[k] for k in row.keys() if k != "seq"}  # noqa: SIM118
    fields["provenance"] = tuple(tuple(h) for h in json.loads(fields["provenance"] or "[]"))
    return RunRecord(**fields)


class RunStore:
    """Runs in gateway.db."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def upsert_started(self, rec: RunRecord) -> RunRecord:
        """Create the (event, policy) run, or return the one a previous attempt created.

        A replayed event thus keeps its first run (and its rendered destination tag).
        """
        now = time.time()
        with self.db.transaction() as c:
            row = c.execute(
                f"SELECT seq, {_COLUMNS} FROM runs WHERE event_id = ? AND policy_id = ?",
                (rec.event_id, rec.policy_id),
            ).fetchone()
            if row is not None:
                return _record(row)
            rec.id = rec.id or uuid.uuid4().hex
            rec.create_time = rec.update_time = now
            if rec.state in FINAL_STATES:
                rec.end_time = now
            c.execute(
                f"INSERT INTO runs ({_COLUMNS}) VALUES ({','.join('?' * _N_COLUMNS)})",
                (
                    rec.id,
                    rec.policy_id,
                    rec.policy_name,
                    rec.event_id,
                    rec.trigger,
                    rec.src_endpoint,
                    rec.src_repository,
                    rec.src_tag,
                    rec.src_digest,
                    rec.dst_endpoint,
                    rec.dst_repository,
                    rec.dst_tag,
                    rec.state,
                    rec.message,
                    rec.transfer_id,
                    rec.create_time,
                    rec.update_time,
                    rec.end_time,
                    json.dumps([list(h) for h in rec.provenance]),
                    rec.hop,
                    rec.cause,
                    rec.previous_digest,
                    rec.action,
                    rec.poll_id,
                ),
            )
        return rec

    def update(
        self,
        run_id: str,
        *,
        state: int,
        message: str | None = None,
        transfer_id: str | None = None,
        src_digest: str | None = None,
    ) -> RunRecord | None:
        """Move a run to `state`; a run already in a final state is left as it is."""
        now = time.time()
        with self.db.transaction() as c:
            row = c.execute(f"SELECT seq, {_COLUMNS} FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                return None
            rec = _record(row)
            if rec.state in FINAL_STATES:
                return rec
            rec.state = state
            rec.update_time = now
            if message is not None:
                rec.message = message
            if transfer_id is not None:
                rec.transfer_id = transfer_id
            if src_digest:
                rec.src_digest = src_digest
            if state in FINAL_STATES:
                rec.end_time = now
            c.execute(
                "UPDATE runs SET state=?, message=?, transfer_id=?, src_digest=?,"
                " update_time=?, end_time=? WHERE id=?",
                (
                    rec.state,
                    rec.message,
                    rec.transfer_id,
                    rec.src_digest,
                    rec.update_time,
                    rec.end_time,
                    run_id,
                ),
            )
        return rec

    def append_message(self, run_id: str, text: str) -> RunRecord | None:
        """Add `text` to a run's message, also of a finished run (what happened after it)."""
        with self.db.transaction() as c:
            c.execute(
                "UPDATE runs SET message = CASE WHEN message = '' THEN ? ELSE message || '; ' || ?"
                " END, update_time = ? WHERE id = ?",
                (text, text, time.time(), run_id),
            )
        return self.get(run_id)

    def get(self, run_id: str) -> RunRecord | None:
        row = self.db.query_one(f"SELECT seq, {_COLUMNS} FROM runs WHERE id = ?", (run_id,))
        return _record(row) if row else None

    def by_event(self, event_id: str) -> list[RunRecord]:
        rows = self.db.query(
            f"SELECT seq, {_COLUMNS} FROM runs WHERE event_id = ? ORDER BY seq", (event_id,)
        )
        return [_record(r) for r in rows]

    def in_states(self, states: Sequence[int]) -> list[RunRecord]:
        marks = ",".join("?" * len(states))
        rows = self.db.query(
            f"SELECT seq, {_COLUMNS} FROM runs WHERE state IN ({marks}) ORDER BY seq",
            tuple(states),
        )
        return [_record(r) for r in rows]

    def covering(
        self, policy_id: str, endpoint: str, repository: str, tag: str, digest: str
    ) -> list[RunRecord]:
        """Runs of a policy for this source tag at this digest (any state)."""
        rows = self.db.query(
            f"SELECT seq, {_COLUMNS} FROM runs WHERE policy_id = ? AND src_endpoint = ?"
            " AND src_repository = ? AND src_tag = ? AND src_digest = ? ORDER BY seq",
            (policy_id, endpoint, repository, tag, digest),
        )
        return [_record(r) for r in rows]

    def by_event_policy(self, event_id: str, policy_id: str) -> RunRecord | None:
        row = self.db.query_one(
            f"SELECT seq, {_COLUMNS} FROM runs WHERE event_id = ? AND policy_id = ?",
            (event_id, policy_id),
        )
        return _record(row) if row else None

    def mirrored(
        self,
        policy_id: str,
        endpoint: str,
        repository: str,
        tag: str,
        digest: str,
        other_than_event: str,
    ) -> RunRecord | None:
        """The newest RUNNING or SUCCEEDED run of a policy (from another event) for this image."""
        row = self.db.query_one(
            f"SELECT seq, {_COLUMNS} FROM runs WHERE policy_id = ? AND src_endpoint = ?"
            " AND src_repository = ? AND src_tag = ? AND src_digest = ? AND event_id != ?"
            " AND state IN (?, ?) ORDER BY seq DESC LIMIT 1",
            (
                policy_id,
                endpoint,
                repository,
                tag,
                digest,
                other_than_event,
                Run.STATE_RUNNING,
                Run.STATE_SUCCEEDED,
            ),
        )
        return _record(row) if row else None

    def last_copy(
        self, policy_id: str, endpoint: str, repository: str, tag: str
    ) -> RunRecord | None:
        """The newest SUCCEEDED copy of this source tag by the policy, unless deleted since."""
        row = self.db.query_one(
            f"SELECT seq, {_COLUMNS} FROM runs WHERE policy_id = ? AND src_endpoint = ?"
            " AND src_repository = ? AND src_tag = ? AND state = ? AND action IN (?, ?)"
            " ORDER BY seq DESC LIMIT 1",
            (
                policy_id, endpoint, repository, tag, Run.STATE_SUCCEEDED,
                Run.ACTION_COPY, Run.ACTION_DELETE,
            ),
        )
        if row is None or row["action"] != Run.ACTION_COPY or not row["dst_tag"]:
            return None
        return _record(row)

    def copies_of(self, policy_id: str) -> list[RunRecord]:
        """Per destination tag, the newest SUCCEEDED copy by the policy not deleted since."""
        rows = self.db.query(
            f"SELECT seq, {_COLUMNS} FROM runs WHERE policy_id = ? AND state = ?"
            " AND action IN (?, ?) AND dst_tag != '' ORDER BY seq",
            (policy_id, Run.STATE_SUCCEEDED, Run.ACTION_COPY, Run.ACTION_DELETE),
        )
        latest: dict[tuple[str, str, str], sqlite3.Row] = {}
        for row in rows:
            latest[(row["dst_endpoint"], row["dst_repository"], row["dst_tag"])] = row
        return [_record(r) for r in latest.values() if r["action"] == Run.ACTION_COPY]

    def endpoints_for_digest(self, repository: str, digest: str) -> list[str]:
        """The source endpoints whose runs copied (or considered) this image."""
        rows = self.db.query(
            "SELECT DISTINCT src_endpoint FROM runs WHERE src_repository = ? AND src_digest = ?",
            (repository, digest),
        )
        return [str(r["src_endpoint"]) for r in rows]

    def latest_for_digest(self, endpoint: str, repository: str, digest: str) -> list[RunRecord]:
        """The newest run of each (policy, source tag) whose source is this image."""
        rows = self.db.query(
            f"SELECT seq, {_COLUMNS} FROM runs WHERE src_endpoint = ? AND src_repository = ?"
            " AND src_digest = ? AND action = 0 ORDER BY seq",
            (endpoint, repository, digest),
        )
        latest: dict[tuple[str, str], sqlite3.Row] = {}
        for row in rows:
            latest[(row["policy_id"], row["src_tag"])] = row
        return [_record(r) for r in latest.values()]

    # -- runs waiting for a signature
    def wait_for_signature(self, run_id: str, until: float, explanation: str) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO signature_waits (run_id, until, explanation) VALUES (?, ?, ?)",
            (run_id, until, explanation),
        )

    def waits_over(self, now: float) -> list[tuple[str, str]]:
        """(run id, explanation) of waits that ended."""
        rows = self.db.query(
            "SELECT run_id, explanation FROM signature_waits WHERE until <= ?", (now,)
        )
        return [(str(r["run_id"]), str(r["explanation"])) for r in rows]

    def is_waiting(self, run_id: str) -> bool:
        return self.db.query_one(
            "SELECT 1 FROM signature_waits WHERE run_id = ?", (run_id,)
        ) is not None

    def end_wait(self, run_id: str) -> None:
        self.db.execute("DELETE FROM signature_waits WHERE run_id = ?", (run_id,))

    def made_by_us(
        self, endpoint: str, repository: str, tag: str, digest: str
    ) -> RunRecord | None:
        """The newest run whose transfer wrote `digest` as `repository:tag` on `endpoint`.

        A push event (or NotifyPush) for such an image is the echo of our own write: the runs
        it triggers inherit that run's chain.
        """
        if not digest:
            return None
        row = self.db.query_one(
            f"SELECT seq, {_COLUMNS} FROM runs WHERE dst_endpoint = ? AND dst_repository = ?"
            " AND dst_tag = ? AND src_digest = ? AND state IN (?, ?) ORDER BY seq DESC LIMIT 1",
            (endpoint, repository, tag, digest, Run.STATE_RUNNING, Run.STATE_SUCCEEDED),
        )
        return _record(row) if row else None

    def list(
        self, policy_id: str, states: Sequence[int], size: int, token: str
    ) -> tuple[list[RunRecord], str]:
        """Newest first, filtered; returns (runs, next_page_token)."""
        n = page_size(size)
        filt: dict[str, object] = {
            "policy_id": policy_id,
            "states": sorted(int(s) for s in states),
        }
        state = decode_token(token, expect=filt)
        where: list[str] = ["1=1"]
        params: list[object] = []
        if policy_id:
            where.append("policy_id = ?")
            params.append(policy_id)
        if states:
            where.append(f"state IN ({','.join('?' * len(states))})")
            params.extend(int(s) for s in states)
        if "before" in state:
            where.append("seq < ?")
            params.append(int(str(state["before"])))
        rows = self.db.query(
            f"SELECT seq, {_COLUMNS} FROM runs WHERE {' AND '.join(where)}"
            " ORDER BY seq DESC LIMIT ?",
            (*params, n + 1),
        )
        nxt = ""
        if len(rows) > n:
            rows = rows[:n]
            nxt = encode_token({**filt, "before": int(rows[-1]["seq"])})
        return [_record(r) for r in rows], nxt

    def policy_status(self, policy_id: str) -> gateway_pb2.PolicyStatus:
        """DTR-like lastStatus: the latest run plus counts and last success/failure times."""
        st = gateway_pb2.PolicyStatus(policy_id=policy_id)
        row = self.db.query_one(
            f"SELECT seq, {_COLUMNS} FROM runs WHERE policy_id = ? ORDER BY seq DESC LIMIT 1",
            (policy_id,),
        )
        if row is None:
            return st
        last = _record(row)
        st.last_state = last.state  # type: ignore[assignment]
        st.last_message = last.message
        st.last_run.CopyFrom(last.to_proto())
        agg = self.db.query_one(
            "SELECT COUNT(*) AS total,"
            " SUM(state = ?) AS ok, SUM(state = ?) AS bad,"
            " MAX(CASE WHEN state = ? THEN end_time END) AS last_ok,"
            " MAX(CASE WHEN state = ? THEN end_time END) AS last_bad"
            " FROM runs WHERE policy_id = ?",
            (
                Run.STATE_SUCCEEDED,
                Run.STATE_FAILED,
                Run.STATE_SUCCEEDED,
                Run.STATE_FAILED,
                policy_id,
            ),
        )
        assert agg is not None
        st.runs_total = int(agg["total"] or 0)
        st.runs_succeeded = int(agg["ok"] or 0)
        st.runs_failed = int(agg["bad"] or 0)
        if agg["last_ok"] is not None:
            st.last_success_time.CopyFrom(_ts(float(agg["last_ok"])))
        if agg["last_bad"] is not None:
            st.last_failure_time.CopyFrom(_ts(float(agg["last_bad"])))
        return st
