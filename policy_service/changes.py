"""The policy service's change log: how replicas on one PostgreSQL database stay consistent.

Every write of a policy or trusted key, in its own transaction, moves the one-row counter
`change_counter.value` and appends (seq, kind, item) to `changes`. Updating the counter row
locks it until commit, so writers on every replica are serialized there and sequence numbers
become visible in commit order: a reader that sees seq N also sees every change before N.

A replica keeps the seq its in-memory copy reflects. Before a read it compares that with the
counter (one indexed single-row SELECT) and, when it moved, reloads just the policies and keys
named by the newer log rows. A write names the seq its checks were made against; when another
replica wrote in between, the write is refused (`StaleView`) and the caller reloads, checks
again and retries, so the graph checks (loops, cycles, collisions) hold across replicas.

The log keeps the newest KEEP rows; a replica further behind reloads everything.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from servicekit.db import Row, Tx

KEEP = 1000
PRUNE_EVERY = 100
POLICY = "policy"
KEY = "key"

# Migration 4 of the store: the counter row and the log.
MIGRATION = """
    CREATE TABLE change_counter (
        id INTEGER PRIMARY KEY,
        value INTEGER NOT NULL,
        pruned_through INTEGER NOT NULL
    );
    INSERT INTO change_counter (id, value, pruned_through) VALUES (1, 0, 0);
    CREATE TABLE changes (
        seq INTEGER NOT NULL,
        kind TEXT NOT NULL,
        item TEXT NOT NULL,
        PRIMARY KEY (seq, kind, item)
    )
"""


class StaleView(Exception):
    """Another replica changed policies or keys since the caller's in-memory copy."""


@dataclass
class Changes:
    """What moved after a seq: the new seq and the items to read again (or everything)."""

    seq: int
    everything: bool = False
    policies: set[str] = field(default_factory=set)
    keys: set[str] = field(default_factory=set)


def record(c: Tx, kind: str, items: list[str], expected_seq: int | None = None) -> int:
    """Log a write of `items` inside its transaction; returns the new seq.

    `expected_seq`: the seq the caller's checks saw; StaleView (roll back) when it moved.
    """
    row: Row = c.execute(
        "UPDATE change_counter SET value = value + 1 WHERE id = 1 "
        "RETURNING value, pruned_through"
    ).fetchone()
    seq, pruned = int(row[0]), int(row[1])
    if expected_seq is not None and seq != expected_seq + 1:
        raise StaleView(f"seq {seq - 1}, expected {expected_seq}")
    c.executemany(
        "INSERT INTO changes (seq, kind, item) VALUES (?, ?, ?)",
        [(seq, kind, item) for item in items],
    )
    if seq - KEEP > pruned and seq % PRUNE_EVERY == 0:  # now and then, not on every write
        c.execute("DELETE FROM changes WHERE seq <= ?", (seq - KEEP,))
        c.execute("UPDATE change_counter SET pruned_through = ? WHERE id = 1", (seq - KEEP,))
    return seq


def current(c: Tx) -> tuple[int, int]:
    """(seq, pruned_through) now."""
    row: Row = c.execute("SELECT value, pruned_through FROM change_counter WHERE id = 1").fetchone()
    return int(row[0]), int(row[1])


def since(c: Tx, seq: int) -> Changes | None:
    """What changed after `seq` (None: nothing). Read before the rows it names, so the rows
    read next are at least as new as the returned seq."""
    now, pruned = current(c)
    if now == seq:
        return None
    if seq < pruned or seq > now:  # the log no longer reaches back, or another database
        return Changes(seq=now, everything=True)
    out = Changes(seq=seq)
    for r in c.execute("SELECT seq, kind, item FROM changes WHERE seq > ? ORDER BY seq", (seq,)):
        out.seq = max(out.seq, int(r["seq"]))
        (out.policies if r["kind"] == POLICY else out.keys).add(str(r["item"]))
    # Rows with seq up to `now` are committed (the counter row serialized them); newer ones
    # seen here are committed too and included.
    out.seq = max(out.seq, now)
    return out
