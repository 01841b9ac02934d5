"""Work shared by gateway replicas on one database: claims with a lease, and singleton duties.

Every replica receives events and follows runs; a row it works on (an event, a run's transfer,
an owed scan) is claimed with a lease, renewed while the work goes on: a replica that dies
loses its claims when their leases run out, and another replica takes the work over. Duties
that must run once across replicas (reconcile, scheduled polls, outbound deliveries, the end
of signature waits, housekeeping) run on the replica holding the duty's row in `leases`.

Lease times are on the database's clock, so replicas on machines whose clocks differ still
agree on when a lease has run out. On SQLite (one process per file) the process takes every
lease and claim over at start, so a restart resumes at once as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from servicekit.db import Database, Tx
from servicekit.logs import context_id
from servicekit.retry import Backoff

log = logging.getLogger("gateway.leases")

DEFAULT_LEASE_S = 15.0
# Asking again for a lock another replica holds: 20 ms at first, at most half a second
# (jittered, so the replicas waiting for one lock do not ask in step).
LOCK_WAIT = Backoff(base=0.02, cap=0.5)


def default_replica_id() -> str:
    """hostname-pid: unique among live replicas, and readable in the leases table."""
    return f"{socket.gethostname()}-{os.getpid()}"


def db_now(db: Database) -> str:
    """SQL for the database's clock in Unix seconds (one clock for every replica)."""
    if db.dialect == "postgresql":
        return "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)"
    return "((julianday('now') - 2440587.5) * 86400.0)"


def in_marks(n: int) -> str:
    return ",".join("?" * n)


@dataclass(frozen=True)
class ClaimTable:
    """Claims on rows of one table: `owner_col` holds the replica, `until_col` the lease's
    end; a row is open to claims while `open_sql` holds (e.g. the run is still RUNNING)."""

    table: str
    key: str
    owner_col: str
    until_col: str
    open_sql: str
    order: str

    def claim(self, db: Database, key: str, owner: str, lease_s: float) -> bool:
        """Claim one row (or renew our claim): False when another replica holds it, or the
        row is no longer open."""
        now = db_now(db)
        return (
            db.execute(
                f"UPDATE {self.table} SET {self.owner_col} = ?, {self.until_col} = {now} + ?"
                f" WHERE {self.key} = ? AND {self.open_sql}"
                f" AND ({self.owner_col} = ? OR {self.until_col} <= {now})",
                (owner, lease_s, key, owner),
            )
            == 1
        )

    def renew(self, db: Database, owner: str, keys: Sequence[str], lease_s: float) -> set[str]:
        """Extend our claims on `keys`; returns the keys still ours."""
        if not keys:
            return set()
        with db.transaction() as c:
            rows = c.execute(
                f"UPDATE {self.table} SET {self.until_col} = {db_now(db)} + ?"
                f" WHERE {self.owner_col} = ? AND {self.key} IN ({in_marks(len(keys))})"
                f" AND {self.open_sql} RETURNING {self.key}",
                (lease_s, owner, *keys),
            ).fetchall()
        return {str(r[0]) for r in rows}

    def orphans(self, db: Database, limit: int) -> list[str]:
        """Open rows nobody holds a live claim on (never claimed, or their replica died)."""
        rows = db.query(
            f"SELECT {self.key} FROM {self.table} WHERE {self.open_sql}"
            f" AND {self.until_col} <= {db_now(db)} ORDER BY {self.order} LIMIT ?",
            (limit,),
        )
        return [str(r[0]) for r in rows]

    def release(self, c: Tx, owner: str = "") -> None:
        """Drop the claims of `owner` (every claim when empty)."""
        where, params = (f" WHERE {self.owner_col} = ?", (owner,)) if owner else ("", ())
        c.execute(
            f"UPDATE {self.table} SET {self.owner_col} = '', {self.until_col} = 0{where}", params
        )


class LeaseStore:
    """Named leases in the `leases` table: one owner at a time, until `expires`."""

    def __init__(self, db: Database, owner: str) -> None:
        self.db = db
        self.owner = owner

    def acquire(self, name: str, lease_s: float) -> bool:
        """Take the lease, or extend it when it is ours; False while another replica holds it."""
        now = db_now(self.db)
        return (
            self.db.execute(
                "INSERT INTO leases (name, owner, expires, acquired_at)"
                f" VALUES (?, ?, {now} + ?, {now})"
                " ON CONFLICT (name) DO UPDATE SET owner = excluded.owner,"
                " expires = excluded.expires, acquired_at = CASE WHEN leases.owner ="
                " excluded.owner THEN leases.acquired_at ELSE excluded.acquired_at END"
                " WHERE leases.owner = excluded.owner OR leases.expires < excluded.acquired_at",
                (name, self.owner, lease_s),
            )
            == 1
        )

    def release(self, name: str) -> None:
        """Give the lease up (a replica stopping cleanly: another takes over at once)."""
        self.db.execute("DELETE FROM leases WHERE name = ? AND owner = ?", (name, self.owner))

    def holders(self) -> dict[str, str]:
        """Live leases: duty name -> the replica holding it."""
        rows = self.db.query(
            f"SELECT name, owner FROM leases WHERE expires > {db_now(self.db)} ORDER BY name"
        )
        return {str(r["name"]): str(r["owner"]) for r in rows}

    def clear(self) -> None:
        """Forget every lease (SQLite at start: this process is the file's only user)."""
        self.db.execute("DELETE FROM leases")

    def forget_expired(self, older_than_s: float) -> int:
        """Drop locks whose holder died long ago (duties' rows are kept: they are reused)."""
        return self.db.execute(
            f"DELETE FROM leases WHERE name LIKE 'lock:%' AND expires < {db_now(self.db)} - ?",
            (older_than_s,),
        )


class SharedLocks:
    """Named locks across replicas: a row in `leases`, renewed while held and deleted after,
    so a holder that dies lets go when its lease runs out. (Within one replica, callers hold
    an asyncio lock of the same name first: the row is re-entrant for its owner.)"""

    def __init__(self, store: LeaseStore, lease_s: float = DEFAULT_LEASE_S) -> None:
        self.store = store
        self.lease_s = lease_s

    @contextlib.asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[None]:
        key = "lock:" + hashlib.sha256(name.encode()).hexdigest()[:40]
        db, tries = self.store.db, 0
        while not await db.run(self.store.acquire, key, self.lease_s):
            await LOCK_WAIT.sleep(tries)
            tries += 1
        renew = asyncio.create_task(self._renew(key))
        try:
            yield
        finally:
            renew.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renew
            try:
                await db.run(self.store.release, key)
            except Exception as exc:  # it runs out by itself
                log.info("cannot release lock %s: %s", key, exc)

    async def _renew(self, key: str) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                await self.store.db.run(self.store.acquire, key, self.lease_s)
            except Exception as exc:
                log.warning("cannot renew lock %s: %s", key, exc)


Duty = Callable[[], Coroutine[Any, Any, None]]


class Duties:
    """Singleton duties: each runs as a task on the one replica holding its lease.

    Every `lease_s / 3` seconds each lease is taken or renewed; a duty starts when its lease
    is won and is cancelled when it is lost (another replica holds it), or when it could not
    be renewed for longer than the lease lasts (this replica may be cut off: someone else
    will take it over).
    """

    def __init__(self, store: LeaseStore, lease_s: float = DEFAULT_LEASE_S) -> None:
        self.store = store
        self.lease_s = lease_s
        self._duties: dict[str, Duty] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._renewed: dict[str, float] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._first_round = asyncio.Event()

    def add(self, name: str, duty: Duty) -> None:
        self._duties[name] = duty

    @property
    def held(self) -> list[str]:
        """The duties running here now."""
        return sorted(n for n, t in self._tasks.items() if not t.done())

    async def start(self) -> None:
        """Start the lease loop; returns after the first round (duties won are running)."""
        self._loop_task = asyncio.create_task(self._loop())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.lease_s):
                await self._first_round.wait()

    async def stop(self) -> None:
        """Cancel the duties and give their leases up."""
        tasks = [t for t in [self._loop_task, *self._tasks.values()] if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        held = list(self._tasks)
        self._tasks.clear()
        for name in held:
            try:
                await self.store.db.run(self.store.release, name)
            except Exception as exc:  # it runs out by itself
                log.info("cannot release lease %s: %s", name, exc)

    async def _loop(self) -> None:
        context_id.set("leases")
        while True:
            for name in self._duties:
                await self._round(name)
            self._first_round.set()
            await asyncio.sleep(self.lease_s / 3)

    async def _round(self, name: str) -> None:
        try:
            won = await self.store.db.run(self.store.acquire, name, self.lease_s)
            if won:
                self._renewed[name] = time.monotonic()
        except Exception as exc:
            # Keep the duty while the lease last renewed still runs (minus a margin).
            since = time.monotonic() - self._renewed.get(name, float("-inf"))
            won = name in self._tasks and since < self.lease_s * 0.8
            log.warning("cannot renew lease %s (%s); %s", name, exc,
                        "keeping it for now" if won else "not running the duty")
        task = self._tasks.get(name)
        if won:
            if task is not None and task.done():
                # A duty loops until cancelled: one that ended failed. Start it again.
                why = None if task.cancelled() else task.exception()
                log.error("duty %s ended (%r); starting it again", name, why)
            if task is None:
                log.info("lease %s taken by %s: running it here", name, self.store.owner)
            if task is None or task.done():
                self._tasks[name] = asyncio.create_task(self._duties[name]())
        elif task is not None:
            log.info("lease %s lost: stopping the duty here", name)
            self._tasks.pop(name, None)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
