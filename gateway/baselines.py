"""What a policy's source held when the policy became active (DTR's Save vs Save & Apply).

Save acts on pushes from then on; Reconcile fills in only what changed after the policy was
created or enabled. The gateway records, per activation (`Policy.active_since`), the source's
tag -> digest pairs it found when it first saw the policy active; Reconcile leaves those alone.
ApplyPolicy ignores the baseline: it acts on every tag there.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from servicekit.db import Database


class BaselineStore:
    """Baselines in the gateway's database (tables `baselines` and `baseline_tags`)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def taken(self, policy_id: str, active_since: float) -> bool:
        row = self.db.query_one(
            "SELECT 1 FROM baselines WHERE policy_id = ? AND active_since = ?",
            (policy_id, active_since),
        )
        return row is not None

    def record(
        self, policy_id: str, active_since: float, tags: Iterable[tuple[str, str, str]]
    ) -> None:
        """Store the (repository, tag, digest) triples seen for this activation, once (the
        first replica to record it wins; a later one adds nothing)."""
        rows = [(policy_id, active_since, r, t, d) for r, t, d in tags]
        with self.db.transaction() as c:
            if not c.execute(
                "INSERT INTO baselines (policy_id, active_since, taken_at) VALUES (?, ?, ?)"
                " ON CONFLICT (policy_id, active_since) DO NOTHING",
                (policy_id, active_since, time.time()),
            ).rowcount:
                return
            if rows:
                c.executemany(
                    "INSERT INTO baseline_tags"
                    " (policy_id, active_since, repository, tag, digest) VALUES (?, ?, ?, ?, ?)"
                    " ON CONFLICT (policy_id, active_since, repository, tag, digest) DO NOTHING",
                    rows,
                )

    def taken_at(self, policy_id: str) -> float | None:
        """When the baseline of the policy's latest activation was recorded."""
        row = self.db.query_one(
            "SELECT taken_at FROM baselines WHERE policy_id = ? ORDER BY active_since DESC LIMIT 1",
            (policy_id,),
        )
        return float(row["taken_at"]) if row else None

    def contains(
        self, policy_id: str, active_since: float, repository: str, tag: str, digest: str
    ) -> bool:
        """Whether this tag already pointed at this digest when the policy became active."""
        row = self.db.query_one(
            "SELECT 1 FROM baseline_tags WHERE policy_id = ? AND active_since = ?"
            " AND repository = ? AND tag = ? AND digest = ?",
            (policy_id, active_since, repository, tag, digest),
        )
        return row is not None

    def forget_older(self, policy_id: str, active_since: float) -> None:
        """Drop baselines of earlier activations of the policy."""
        with self.db.transaction() as c:
            c.execute(
                "DELETE FROM baseline_tags WHERE policy_id = ? AND active_since < ?",
                (policy_id, active_since),
            )
            c.execute(
                "DELETE FROM baselines WHERE policy_id = ? AND active_since < ?",
                (policy_id, active_since),
            )
