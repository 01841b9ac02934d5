"""Each service's database: versioned migrations on SQLite (embedded) or PostgreSQL (shared).

One SQL dialect is written in the stores: SQLite's `?` placeholders and its type names
(INTEGER, REAL, TEXT, BLOB, `INTEGER PRIMARY KEY AUTOINCREMENT`), plus what both engines
share (`ON CONFLICT ... DO NOTHING / DO UPDATE`, `RETURNING`, `excluded.`, COALESCE, CASE).
The PostgreSQL engine translates placeholders and DDL type names; statements that differ
(FOR UPDATE SKIP LOCKED, JSON functions, GLOB) branch on `Database.dialect`, or use a
`Migration(sqlite=..., postgresql=...)` pair in a migration list.

The methods are blocking; code on an event loop awaits `db.run(fn, *args)`, which runs `fn`
on the database's own threads so a slow query never stalls the loop.
"""

from __future__ import annotations

import asyncio
import functools
import re
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, Protocol, TypeVar

P = ParamSpec("P")
R = TypeVar("R")

Params = Sequence[object] | dict[str, object]


class Row(Protocol):
    """A result row: by position (`row[0]`) or by column name (`row["id"]`); `dict(row)`."""

    def __getitem__(self, key: int | str, /) -> Any: ...
    def keys(self) -> list[str]: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[Any]: ...


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...


class Tx(Protocol):
    """The connection inside `Database.transaction()` (a sqlite3.Connection on SQLite)."""

    def execute(self, sql: str, params: Params = ..., /) -> Any: ...
    def executemany(self, sql: str, seq: Any, /) -> Any: ...


@dataclass(frozen=True)
class Migration:
    """One schema step written twice, where the engines cannot share the SQL."""

    sqlite: str
    postgresql: str


MigrationStep = str | Migration


class DatabaseError(Exception):
    """Base of the errors both engines raise, as `except db.Error`."""


def _integrity_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [sqlite3.IntegrityError]
    try:
        import psycopg

        errors.append(psycopg.errors.IntegrityError)
    except ImportError:  # the SDK-only install has no psycopg; SQLite needs none
        pass
    return tuple(errors)


def _operational_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [sqlite3.Error]
    try:
        import psycopg

        errors.append(psycopg.OperationalError)
    except ImportError:
        pass
    return tuple(errors)


#: `except INTEGRITY_ERRORS:` catches a unique/foreign-key violation on either engine.
INTEGRITY_ERRORS = _integrity_errors()
#: Errors of the database itself (unreachable, disk full, I/O) on either engine.
ENGINE_ERRORS = _operational_errors()


def is_postgres_url(target: str | Path) -> bool:
    return isinstance(target, str) and target.startswith(("postgresql://", "postgres://"))


class Database:
    """A service's database, brought to the latest schema version on open.

    `migrations[i]` takes the schema from version i to i+1. `target` is a SQLite file path
    (or ":memory:") or a `postgresql://` URL; on PostgreSQL the service's tables live in the
    schema `schema` (one per service, so services can share a server without sharing tables).
    """

    dialect: str

    def __new__(cls, target: str | Path, migrations: Sequence[MigrationStep], **kw: Any) -> Any:
        if cls is Database:
            impl: type[Database] = PostgresDatabase if is_postgres_url(target) else SqliteDatabase
            return super().__new__(impl)
        return super().__new__(cls)

    def __init__(
        self, target: str | Path, migrations: Sequence[MigrationStep], *, schema: str = "public"
    ) -> None:
        self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="db")

    # The engine's part ---------------------------------------------------------------

    @property
    def schema_version(self) -> int:
        raise NotImplementedError

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        """One transaction (ROLLBACK on error): nothing is ever half-saved."""
        raise NotImplementedError
        yield

    def query(self, sql: str, params: Params = ()) -> list[Row]:
        raise NotImplementedError

    def query_one(self, sql: str, params: Params = ()) -> Row | None:
        raise NotImplementedError

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    # Shared ---------------------------------------------------------------------------

    @property
    def for_update_skip_locked(self) -> str:
        """Appended to a SELECT that claims rows: lets replicas claim different rows."""
        return ""

    def execute(self, sql: str, params: Params = ()) -> int:
        """Run one statement in its own transaction; returns the rows changed."""
        with self.transaction() as c:
            return int(c.execute(sql, params).rowcount)

    async def run(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run blocking store code off the event loop, on the database's threads."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))


class SqliteDatabase(Database):
    """A SQLite file; the version lives in PRAGMA user_version."""

    dialect = "sqlite"

    def __init__(
        self, target: str | Path, migrations: Sequence[MigrationStep], *, schema: str = "public"
    ) -> None:
        super().__init__(target, migrations, schema=schema)
        self.path = Path(target)
        if str(target) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        # One connection, shared by the threads that use it, serialized by a lock.
        self.conn = sqlite3.connect(
            self.path if str(target) != ":memory:" else ":memory:",
            isolation_level=None,
            check_same_thread=False,
            timeout=30,
        )
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed row survives a crash of the process and of the machine.
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute("PRAGMA foreign_keys=ON")
        self.lock = threading.RLock()
        self._migrate(migrations)

    def _migrate(self, migrations: Sequence[MigrationStep]) -> None:
        version = self.schema_version
        if version > len(migrations):
            raise RuntimeError(
                f"{self.path}: schema version {version} is newer than this program "
                f"({len(migrations)}); upgrade image-mirror"
            )
        for i in range(version, len(migrations)):
            step = migrations[i]
            with self.transaction() as c:
                for stmt in split_sql(step.sqlite if isinstance(step, Migration) else step):
                    c.execute(stmt)
                c.execute(f"PRAGMA user_version={i + 1}")

    @property
    def schema_version(self) -> int:
        return int(self.conn.execute("PRAGMA user_version").fetchone()[0])

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error)."""
        with self.lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            else:
                self.conn.execute("COMMIT")

    def query(self, sql: str, params: Params = ()) -> list[Row]:
        with self.lock:
            return list(self.conn.execute(sql, params).fetchall())

    def query_one(self, sql: str, params: Params = ()) -> Row | None:
        with self.lock:
            row: Row | None = self.conn.execute(sql, params).fetchone()
            return row

    def close(self) -> None:
        super().close()
        with self.lock:
            self.conn.close()


class PgRow(tuple[Any, ...]):
    """A psycopg row that reads like sqlite3.Row: by position or by column name."""

    _names: tuple[str, ...] = ()

    def __getitem__(self, key: Any) -> Any:  # type: ignore[override]
        if isinstance(key, str):
            try:
                return tuple.__getitem__(self, self._names.index(key))
            except ValueError:
                raise IndexError(f"no column {key!r}") from None
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._names)


def _pg_row_factory(cursor: Any) -> Callable[[Sequence[Any]], PgRow]:
    names = tuple(d.name for d in (cursor.description or ()))
    cls = type("Row", (PgRow,), {"_names": names, "__slots__": ()})
    return lambda values: cls(values)


# A type name is upper case and follows a column name (so a column called `blob` stays).
_PG_TYPES = [
    (
        re.compile(r"(\w\s+)INTEGER\s+PRIMARY\s+KEY\s+AUTOINCREMENT\b"),
        r"\1BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
    ),
    (re.compile(r"(\w\s+)INTEGER\b"), r"\1BIGINT"),
    (re.compile(r"(\w\s+)REAL\b"), r"\1DOUBLE PRECISION"),
    (re.compile(r"(\w\s+)BLOB\b"), r"\1BYTEA"),
]


def pg_sql(sql: str) -> str:
    """SQLite-dialect SQL to psycopg's: `?` becomes `%s`, a literal `%` becomes `%%`;
    quoted strings and identifiers are left as they are."""
    out: list[str] = []
    quote = ""
    for ch in sql:
        if quote:
            out.append("%%" if ch == "%" else ch)
            if ch == quote:
                quote = ""
        elif ch in ("'", '"'):
            quote = ch
            out.append(ch)
        elif ch == "?":
            out.append("%s")
        elif ch == "%":
            out.append("%%")
        else:
            out.append(ch)
    return "".join(out)


def pg_ddl(sql: str) -> str:
    """SQLite DDL type names to PostgreSQL's (64-bit integers, doubles, bytea)."""
    for pattern, replacement in _PG_TYPES:
        sql = pattern.sub(replacement, sql)
    return sql


def _pg_params(params: Params) -> Params:
    # SQLite stores booleans as 0/1 in INTEGER columns; PostgreSQL will not cast bool to bigint.
    if isinstance(params, dict):
        return {k: int(v) if isinstance(v, bool) else v for k, v in params.items()}
    return [int(v) if isinstance(v, bool) else v for v in params]


class _PgTx:
    """The transaction handle on PostgreSQL: SQLite-dialect statements, translated."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Params = ()) -> Any:
        cur = self._conn.cursor(row_factory=_pg_row_factory)
        if params:
            cur.execute(pg_sql(sql), _pg_params(params))
        else:  # no parameters: psycopg leaves the text alone
            cur.execute(sql)
        return cur

    def executemany(self, sql: str, seq: Any) -> Any:
        cur = self._conn.cursor(row_factory=_pg_row_factory)
        cur.executemany(pg_sql(sql), [_pg_params(p) for p in seq])
        return cur


class PostgresDatabase(Database):
    """A schema of its own in a PostgreSQL database, through a psycopg connection pool.

    Migrations run under an advisory lock, so replicas that start together migrate once;
    the version lives in `<schema>.schema_version`. Writes in one process are serialized,
    as on SQLite, so a store's read-then-write transaction means the same on both engines
    within a process; across replicas, claims use conditional UPDATEs and SKIP LOCKED.
    """

    dialect = "postgresql"

    def __init__(
        self, target: str | Path, migrations: Sequence[MigrationStep], *, schema: str = "public"
    ) -> None:
        super().__init__(target, migrations, schema=schema)
        import psycopg
        from psycopg_pool import ConnectionPool

        if not re.fullmatch(r"[a-z_][a-z0-9_]*", schema):
            raise ValueError(f"schema name {schema!r}: lowercase letters, digits and _ only")
        self.url = str(target)
        self.schema = schema
        self.lock = threading.RLock()
        try:
            # Fail fast with the server's own words (the pool would retry until its timeout).
            psycopg.connect(self.url, connect_timeout=10).close()
        except psycopg.Error as exc:
            raise RuntimeError(
                f"cannot connect to PostgreSQL ({_redact(self.url)}): {exc}"
            ) from exc
        self.pool = ConnectionPool(
            self.url,
            min_size=1,
            max_size=8,
            kwargs={"autocommit": True, "options": f"-c search_path={schema}"},
            open=False,
            name=f"mirror-{schema}",
        )
        try:
            self.pool.open(wait=True, timeout=30)
        except Exception as exc:
            self.pool.close()
            raise RuntimeError(
                f"cannot connect to PostgreSQL ({_redact(self.url)}): {exc}"
            ) from exc
        self._migrate(migrations)

    def _migrate(self, migrations: Sequence[MigrationStep]) -> None:
        with self.pool.connection() as conn, conn.transaction():
            # One replica migrates; the others wait here and then find nothing to do.
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"migrate:{self.schema}",))
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {self.schema}")
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {self.schema}.schema_version (version BIGINT NOT NULL)"
            )
            row = conn.execute(f"SELECT version FROM {self.schema}.schema_version").fetchone()
            if row is None:
                conn.execute(f"INSERT INTO {self.schema}.schema_version VALUES (0)")
                version = 0
            else:
                version = int(row[0])
            if version > len(migrations):
                raise RuntimeError(
                    f"schema {self.schema}: version {version} is newer than this program "
                    f"({len(migrations)}); upgrade image-mirror"
                )
            for i in range(version, len(migrations)):
                step = migrations[i]
                sql = step.postgresql if isinstance(step, Migration) else pg_ddl(step)
                for stmt in split_sql(sql):
                    conn.execute(stmt)
                conn.execute(f"UPDATE {self.schema}.schema_version SET version = %s", (i + 1,))

    @property
    def schema_version(self) -> int:
        row = self.query_one(f"SELECT version FROM {self.schema}.schema_version")
        return int(row[0]) if row else 0

    @property
    def for_update_skip_locked(self) -> str:
        return " FOR UPDATE SKIP LOCKED"

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        with self.lock, self.pool.connection() as conn, conn.transaction():
            yield _PgTx(conn)

    def query(self, sql: str, params: Params = ()) -> list[Row]:
        with self.pool.connection() as conn:
            return list(_PgTx(conn).execute(sql, params).fetchall())

    def query_one(self, sql: str, params: Params = ()) -> Row | None:
        with self.pool.connection() as conn:
            row: Row | None = _PgTx(conn).execute(sql, params).fetchone()
            return row

    def close(self) -> None:
        super().close()
        self.pool.close()


def _redact(url: str) -> str:
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


def split_sql(script: str) -> list[str]:
    """A migration script's statements (split on `;`; no `;` inside the SQL's strings)."""
    return [s.strip() for s in script.split(";") if s.strip()]


def open_service_database(
    target: str | Path, default_file: Path, migrations: Sequence[MigrationStep], schema: str
) -> Database:
    """`target` a postgresql:// URL, or empty for the service's SQLite file under --data."""
    if target and is_postgres_url(target):
        db: Database = Database(target, migrations, schema=schema)
    else:
        db = Database(Path(target) if target else default_file, migrations)
    return db
