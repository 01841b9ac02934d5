"""Copy a service's rows from one database to another (embedded SQLite -> PostgreSQL).

Both sides are opened through `Database`, so both are first migrated to this release's
schema; then every table's rows are copied column by column (the columns both sides have),
in one transaction on the destination, which must be empty (rows its own migrations put
there, such as a counter row, are replaced by the source's). Identity counters on
PostgreSQL are moved past the copied ids, so new rows do not collide with old ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from servicekit.db import Database, MigrationStep, Tx

_BATCH = 500


@dataclass(frozen=True)
class Copied:
    table: str
    rows: int


def tables(db: Database) -> list[str]:
    """The service's own tables, in creation order (parents before children)."""
    if db.dialect == "sqlite":
        rows = db.query(
            "SELECT name FROM sqlite_master WHERE type = 'table' "
            "AND name NOT LIKE 'sqlite_%' ORDER BY rowid"
        )
    else:
        rows = db.query(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = current_schema() AND c.relkind = 'r' "
            "AND c.relname != 'schema_version' ORDER BY c.oid"
        )
    return [str(r[0]) for r in rows]


def columns(db: Database, table: str) -> list[str]:
    if db.dialect == "sqlite":
        return [str(r[1]) for r in db.query(f'PRAGMA table_info("{table}")')]
    rows = db.query(
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = ? ORDER BY ordinal_position",
        (table,),
    )
    return [str(r[0]) for r in rows]


def seeded_tables(migrations: Sequence[MigrationStep]) -> frozenset[str]:
    """Tables that the migrations themselves fill (so a new database is not row-free)."""
    fresh = Database(":memory:", migrations)
    try:
        return frozenset(t for t in tables(fresh) if fresh.query_one(f'SELECT 1 FROM "{t}"'))
    finally:
        fresh.close()


def copy_rows(src: Database, dst: Database, seeded: frozenset[str] = frozenset()) -> list[Copied]:
    """Copy every row of `src` into the empty `dst` (same service, same schema version);
    the rows of `seeded` tables in `dst` are replaced."""
    if src.schema_version != dst.schema_version:
        raise ValueError(
            f"schema versions differ ({src.schema_version} vs {dst.schema_version}); "
            "open both with this release first"
        )
    wanted = tables(src)
    have = set(tables(dst))
    busy = [
        t
        for t in wanted
        if t in have and t not in seeded and dst.query_one(f'SELECT 1 FROM "{t}" LIMIT 1')
    ]
    if busy:
        raise ValueError(f"the destination already holds rows (table {busy[0]}); it must be empty")
    done: list[Copied] = []
    with dst.transaction() as tx:
        for table in wanted:
            if table not in have:
                continue
            cols = [c for c in columns(src, table) if c in set(columns(dst, table))]
            if table in seeded:
                tx.execute(f'DELETE FROM "{table}"')
            names = ", ".join(f'"{c}"' for c in cols)
            marks = ", ".join("?" for _ in cols)
            rows = src.query(f'SELECT {names} FROM "{table}"')
            for i in range(0, len(rows), _BATCH):
                tx.executemany(
                    f'INSERT INTO "{table}" ({names}) VALUES ({marks})',
                    [tuple(r) for r in rows[i : i + _BATCH]],
                )
            done.append(Copied(table, len(rows)))
        if dst.dialect == "postgresql":
            _advance_identities(tx)
    return done


def _advance_identities(tx: Tx) -> None:
    run = tx.execute
    idents = run(
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND is_identity = 'YES'"
    ).fetchall()
    for table, column in idents:
        run(
            f"SELECT setval(pg_get_serial_sequence('\"{table}\"', '{column}'), "
            f'COALESCE((SELECT MAX("{column}") FROM "{table}"), 0) + 1, false)'
        )
