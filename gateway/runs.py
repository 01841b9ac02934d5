"""Run history: one row per (event, policy), and each policy's last status."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf.timestamp_pb2 import Timestamp
from mirror.v1 import common_pb2, gateway_pb2

from gateway.leases import ClaimTable
from servicekit.db import Database, Row, Tx
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


# One replica follows a RUNNING run's transfer at a time (gateway/tracker.py).
TRACKING = ClaimTable(
    "runs", "id", "tracked_by", "tracked_until", f"state = {Run.STATE_RUNNING}", "seq"
)


def _record(row: Row) -> RunRecord:
    fields = {k: row[k] for k in row.keys() if k != "seq"}  # noqa: SIM118
    fields["provenance"] = tuple(tuple(h) for h in json.loads(fields["provenance"] or "[]"))
    return RunRecord(**fields)


def append_message(c: Tx, run_id: str, text: str) -> None:
    """RunStore.append_message inside the caller's transaction."""
    c.execute(
        "UPDATE runs SET message = CASE WHEN message = '' THEN ? ELSE message || '; ' || ?"
        " END, update_time = ? WHERE id = ?",
        (text, text, time.time(), run_id),
    )


class RunStore:
    """Runs in the gateway's database (shared by its replicas)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        # Read-then-write transactions lock the run's row against other replicas.
        self._for_update = " FOR UPDATE" if db.dialect == "postgresql" else ""

    def upsert_started(self, rec: RunRecord) -> RunRecord:
        """Create the (event, policy) run, or return the one a previous attempt created.

        A replayed event thus keeps its first run (and its rendered destination tag); so does
        an event that two replicas act on at once (the second insert yields to the first).
        Returns `rec` itself only when this call created the run.
        """
        select = f"SELECT seq, {_COLUMNS} FROM runs WHERE event_id = ? AND policy_id = ?"
        key = (rec.event_id, rec.policy_id)
        with self.db.transaction() as c:
            row = c.execute(select, key).fetchone()
            if row is not None:
                return _record(row)
        now = time.time()
        rec.id = rec.id or uuid.uuid4().hex
        rec.create_time = rec.update_time = now
        if rec.state in FINAL_STATES:
            rec.end_time = now
        with self.db.transaction() as c:
            cur = c.execute(
                f"INSERT INTO runs ({_COLUMNS}) VALUES ({','.join('?' * _N_COLUMNS)})"
                " ON CONFLICT (event_id, policy_id) DO NOTHING",
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
            if cur.rowcount == 1:
                return rec
            # Another replica recorded this (event, policy) in the meantime: theirs stands.
            row = c.execute(select, key).fetchone()
        assert row is not None
        return _record(row)

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
        return self.transition(
            run_id, state=state, message=message, transfer_id=transfer_id, src_digest=src_digest
        )[0]

    def transition(
        self,
        run_id: str,
        *,
        state: int,
        message: str | None = None,
        transfer_id: str | None = None,
        src_digest: str | None = None,
    ) -> tuple[RunRecord | None, bool]:
        """`update`, also saying whether this call changed the run's state: of two replicas
        finishing one run, only one is told it did (it alone notifies)."""
        now = time.time()
        with self.db.transaction() as c:
            row = c.execute(
                f"SELECT seq, {_COLUMNS} FROM runs WHERE id = ?{self._for_update}", (run_id,)
            ).fetchone()
            if row is None:
                return None, False
            rec = _record(row)
            if rec.state in FINAL_STATES:
                return rec, False
            changed = rec.state != state
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
        return rec, changed

    def append_message(self, run_id: str, text: str) -> RunRecord | None:
        """Add `text` to a run's message, also of a finished run (what happened after it)."""
        with self.db.transaction() as c:
            append_message(c, run_id, text)
        return self.get(run_id)

    def get(self, run_id: str) -> RunRecord | None:
        row = self.db.query_one(f"SELECT seq, {_COLUMNS} FROM runs WHERE id = ?", (run_id,))
        return _record(row) if row else None

    def by_event(self, event_id: str) -> list[RunRecord]:
        rows = self.db.query(
            f"SELECT seq, {_COLUMNS} FROM runs WHERE event_id = ? ORDER BY seq", (event_id,)
        )
        return [_record(r) for r in rows]

    def in_states(
        self, states: Sequence[int], updated_before: float | None = None
    ) -> list[RunRecord]:
        """Runs in `states`, oldest first (only those unchanged since `updated_before`)."""
        marks = ",".join("?" * len(states))
        params: list[object] = list(states)
        since = ""
        if updated_before is not None:
            since = " AND update_time < ?"
            params.append(updated_before)
        rows = self.db.query(
            f"SELECT seq, {_COLUMNS} FROM runs WHERE state IN ({marks}){since} ORDER BY seq",
            params,
        )
        return [_record(r) for r in rows]

    # -- which replica follows a RUNNING run's transfer (a claim with a lease)
    def claim_tracking(self, run_id: str, owner: str, lease_s: float) -> bool:
        return TRACKING.claim(self.db, run_id, owner, lease_s)

    def renew_tracking(self, owner: str, run_ids: Sequence[str], lease_s: float) -> set[str]:
        return TRACKING.renew(self.db, owner, run_ids, lease_s)

    def untracked(self, limit: int = 100) -> list[str]:
        """RUNNING runs no replica follows (never claimed, or their replica died)."""
        return TRACKING.orphans(self.db, limit)

    def release_tracking(self, owner: str = "") -> None:
        with self.db.transaction() as c:
            TRACKING.release(c, owner)

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

    def poll_copying(self, poll_id: str) -> bool:
        """Whether a run the poll started is still pending or running."""
        row = self.db.query_one(
            "SELECT 1 FROM runs WHERE state IN (?, ?) AND poll_id = ? LIMIT 1",
            (Run.STATE_PENDING, Run.STATE_RUNNING, poll_id),
        )
        return row is not None

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
        latest: dict[tuple[str, str, str], Row] = {}
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
        latest: dict[tuple[str, str], Row] = {}
        for row in rows:
            latest[(row["policy_id"], row["src_tag"])] = row
        return [_record(r) for r in latest.values()]

    # -- runs waiting for a signature
    def wait_for_signature(self, run_id: str, until: float, explanation: str) -> None:
        self.db.execute(
            "INSERT INTO signature_waits (run_id, until, explanation) VALUES (?, ?, ?)"
            " ON CONFLICT (run_id) DO UPDATE SET until = excluded.until,"
            " explanation = excluded.explanation",
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

    def end_wait(self, run_id: str) -> bool:
        """End the wait; True when this call ended it (not another replica before)."""
        return self.db.execute("DELETE FROM signature_waits WHERE run_id = ?", (run_id,)) == 1

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
            " SUM(CASE WHEN state = ? THEN 1 ELSE 0 END) AS ok,"
            " SUM(CASE WHEN state = ? THEN 1 ELSE 0 END) AS bad,"
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
