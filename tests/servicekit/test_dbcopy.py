"""servicekit.dbcopy: an embedded SQLite database copied into PostgreSQL, row for row."""

from __future__ import annotations

from pathlib import Path

import pytest

from servicekit.db import Database
from servicekit.dbcopy import copy_rows
from tests.servicekit.test_database import MIGRATIONS


def test_every_row_arrives_and_new_ids_follow_the_old(tmp_path: Path, pg_url: str) -> None:
    src = Database(tmp_path / "svc.db", MIGRATIONS)
    for i in range(1203):  # more than one batch
        src.execute(
            "INSERT INTO things (name, size, ratio, blob, flag) VALUES (?, ?, ?, ?, ?)",
            (f"n{i}", i * 1_000_000_000, i / 3, bytes([i % 256]) * 3, i % 2),
        )
    src.execute("DELETE FROM things WHERE name = 'n5'")  # a gap in the ids stays a gap
    dst = Database(pg_url, MIGRATIONS, schema="svc")

    copied = copy_rows(src, dst)

    assert [(c.table, c.rows) for c in copied] == [("things", 1202)]
    want = [tuple(r) for r in src.query("SELECT * FROM things ORDER BY seq")]
    got = [tuple(r) for r in dst.query("SELECT * FROM things ORDER BY seq")]
    assert got == [(s, n, z, r, bytes(b), f) for s, n, z, r, b, f in want]
    with dst.transaction() as tx:
        seq = tx.execute(
            "INSERT INTO things (name) VALUES (?) RETURNING seq", ("after",)
        ).fetchone()
    assert int(seq[0]) == 1204


def test_a_destination_with_rows_is_refused(tmp_path: Path, pg_url: str) -> None:
    src = Database(tmp_path / "svc.db", MIGRATIONS)
    src.execute("INSERT INTO things (name) VALUES ('a')")
    dst = Database(pg_url, MIGRATIONS, schema="svc")
    dst.execute("INSERT INTO things (name) VALUES ('already')")
    with pytest.raises(ValueError, match="must be empty"):
        copy_rows(src, dst)
    assert [r["name"] for r in dst.query("SELECT name FROM things")] == ["already"]
