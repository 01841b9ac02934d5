"""servicekit.db on both engines: migrations, placeholders, rows, transactions, errors."""

from __future__ import annotations

import asyncio
import threading

import pytest

from servicekit.db import INTEGRITY_ERRORS, Database, Migration, MigrationStep, pg_sql

MIGRATIONS: list[MigrationStep] = [
    """
    CREATE TABLE things (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL UNIQUE,
        size INTEGER NOT NULL DEFAULT 0,
        ratio REAL NOT NULL DEFAULT 0,
        blob BLOB,
        flag INTEGER NOT NULL DEFAULT 0
    );
    """,
    Migration(
        sqlite="CREATE INDEX things_size ON things(size)",
        postgresql="CREATE INDEX things_size ON things USING btree (size)",
    ),
]


def test_migrations_rows_and_placeholders(db_target: str) -> None:
    db = Database(db_target, MIGRATIONS, schema="svc")
    assert db.schema_version == 2
    with db.transaction() as c:
        c.execute(
            "INSERT INTO things (name, size, ratio, blob, flag) VALUES (?, ?, ?, ?, ?)",
            ("a%b", 5_000_000_000, 0.5, b"\x00\x01", True),
        )
        row = c.execute("INSERT INTO things (name) VALUES (?) RETURNING seq", ("b",)).fetchone()
        assert int(row[0]) == 2
    got = db.query_one("SELECT * FROM things WHERE name LIKE ? || '%'", ("a%",))
    assert got is not None
    assert (got["name"], got["size"], got["ratio"], bytes(got["blob"]), got["flag"]) == (
        "a%b",
        5_000_000_000,
        0.5,
        b"\x00\x01",
        1,
    )
    assert dict(got)["seq"] == 1 and got[0] == 1
    assert (
        db.execute("INSERT INTO things (name) VALUES (?) ON CONFLICT (name) DO NOTHING", ("a%b",))
        == 0
    )
    db.close()
    # Re-opening applies nothing new and keeps the rows.
    again = Database(db_target, MIGRATIONS, schema="svc")
    assert again.schema_version == 2
    assert [r["name"] for r in again.query("SELECT name FROM things ORDER BY seq")] == ["a%b", "b"]
    again.close()


def test_a_failed_transaction_keeps_nothing(db_target: str) -> None:
    db = Database(db_target, MIGRATIONS, schema="svc")
    with pytest.raises(INTEGRITY_ERRORS), db.transaction() as c:
        c.execute("INSERT INTO things (name) VALUES (?)", ("x",))
        c.execute("INSERT INTO things (name) VALUES (?)", ("x",))
    assert db.query("SELECT * FROM things") == []
    db.close()


def test_a_newer_schema_is_refused(db_target: str) -> None:
    Database(db_target, MIGRATIONS, schema="svc").close()
    with pytest.raises(RuntimeError, match="newer than this program"):
        Database(db_target, MIGRATIONS[:1], schema="svc")


def test_run_is_off_the_event_loop(db_target: str) -> None:
    db = Database(db_target, MIGRATIONS, schema="svc")
    loop_thread = threading.get_ident()

    def work() -> int:
        assert threading.get_ident() != loop_thread
        return db.execute("INSERT INTO things (name) VALUES (?)", ("t",))

    assert asyncio.run(db.run(work)) == 1
    db.close()


def test_two_processes_migrate_once(pg_url: str) -> None:
    # Replicas that start together: the advisory lock makes one migrate, the other wait.
    dbs: list[Database] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            dbs.append(Database(pg_url, MIGRATIONS, schema="svc"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and all(d.schema_version == 2 for d in dbs)
    for d in dbs:
        d.close()


def test_schemas_keep_services_apart(pg_url: str) -> None:
    a = Database(pg_url, MIGRATIONS, schema="alpha")
    b = Database(pg_url, MIGRATIONS, schema="beta")
    a.execute("INSERT INTO things (name) VALUES (?)", ("only-a",))
    assert b.query("SELECT * FROM things") == []
    a.close()
    b.close()


def test_pg_sql_translation() -> None:
    assert pg_sql("SELECT '?%' , x FROM t WHERE a = ? AND b LIKE 'p%'") == (
        "SELECT '?%%' , x FROM t WHERE a = %s AND b LIKE 'p%%'"
    )


def test_the_url_password_is_not_in_the_error() -> None:
    with pytest.raises(RuntimeError) as err:
        Database("postgresql://u:s3cret@127.0.0.1:1/x?connect_timeout=1", MIGRATIONS, schema="s")
    assert "s3cret" not in str(err.value)
