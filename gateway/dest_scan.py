"""Scan on push at the destination: a mirrored image is scanned where it landed.

Scan reports and signatures are metadata of one registry and are not carried by a mirror (the
transfer copies just the image). A destination endpoint with `scan_on_push` scans what is
pushed to it: after the mirror succeeds, the scanner is asked to scan the image at the
destination (endpoint, repository, digest), which stores a report for that repository's copy.

The scan owed is recorded (`destination_scans`) before the run is recorded SUCCEEDED and
resumed on start, so neither a crash nor a scanner outage loses it. Its outcome is added to
the run's message and logged; a failed scan never changes the run's state.
"""

from __future__ import annotations

import asyncio
import logging
import time

import grpc
from mirror.v1 import common_pb2, scan_pb2, scan_pb2_grpc, transfer_pb2

from gateway.endpoints import EndpointDirectory
from gateway.leases import DEFAULT_LEASE_S, ClaimTable
from gateway.runs import RunStore, append_message
from gateway.tasks import KeyedTasks
from servicekit.db import Database
from servicekit.logs import context_id
from servicekit.retry import Backoff, transient_rpc_error

log = logging.getLogger("gateway.dest_scan")

PENDING, DONE, FAILED = "pending", "done", "failed"


def summary(report: scan_pb2.ScanReport) -> str:
    c = report.counts
    return (
        f"{len(report.components)} components, vulnerabilities: {c.critical} critical, "
        f"{c.major} major, {c.minor} minor"
    )


# A scan owed is run by the replica that claimed it (renewed while the scanner works).
CLAIMS = ClaimTable(
    "destination_scans", "run_id", "claimed_by", "claim_expires", f"state = '{PENDING}'",
    "create_time",
)


class DestinationScanner:
    """Owes, runs and records the scans of mirrored images at scan-on-push destinations.

    Of several replicas, the one that claimed an owed scan runs it; a scan whose replica
    died is claimed by another one when the lease runs out.
    """

    def __init__(
        self,
        db: Database,
        directory: EndpointDirectory,
        scanner: scan_pb2_grpc.ScanServiceStub | None,
        runs: RunStore,
        *,
        timeout_s: float = 300.0,
        attempts: int = 6,
        backoff_s: float = 1.0,
        owner: str = "local",
        lease_s: float = DEFAULT_LEASE_S,
    ) -> None:
        self.db = db
        self.directory = directory
        self.scanner = scanner
        self.runs = runs
        self.timeout_s = timeout_s
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.owner = owner
        self.lease_s = lease_s
        self._tasks = KeyedTasks()

    async def prepare(self, run_id: str, tr: transfer_pb2.Transfer) -> bool:
        """Before a succeeded transfer's run is recorded: owe a scan when the destination
        scans on push. Raises grpc errors of ListEndpoints (the caller retries)."""
        if self.scanner is None or not tr.digest:
            return False
        dest = tr.destination
        endpoints = await self.directory.all()
        if not any(ep.name == dest.endpoint and ep.scan_on_push for ep in endpoints):
            return False
        await self.db.run(
            self.db.execute,
            "INSERT INTO destination_scans (run_id, endpoint, repository, digest,"
            " state, create_time) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (run_id) DO NOTHING",
            (run_id, dest.endpoint, dest.repository, tr.digest, PENDING, time.time()),
        )
        return True

    async def start(self, run_id: str) -> None:
        """Run the scan owed for this run, if any (idempotent)."""
        row = await self.db.run(
            self.db.query_one, "SELECT state FROM destination_scans WHERE run_id = ?", (run_id,)
        )
        if row is not None and row["state"] == PENDING:
            await self._spawn(run_id)

    async def adopt(self) -> int:
        """Run the owed scans no replica runs (at start: those a restart left; later: those
        of a replica that died). Returns how many were taken here."""
        if self.scanner is None:
            return 0
        taken = 0
        for run_id in await self.db.run(CLAIMS.orphans, self.db, 100):
            taken += await self._spawn(run_id)
        return taken

    async def maintain_forever(self) -> None:
        """Renew the claims of the scans running here and adopt orphaned ones."""
        context_id.set("destination-scans")
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                mine = self._tasks.keys()
                if mine:
                    held = await self.db.run(CLAIMS.renew, self.db, self.owner, mine, self.lease_s)
                    for run_id in set(mine) - held:
                        self._tasks.cancel(run_id)  # another replica took it over
                await self.adopt()
            except Exception as exc:
                log.warning("renewing the claims of destination scans failed: %s", exc)

    @property
    def active(self) -> int:
        return len(self._tasks)

    async def stop(self) -> None:
        await self._tasks.stop()

    async def _spawn(self, run_id: str) -> bool:
        if self.scanner is None:
            return False
        if run_id not in self._tasks:
            if not await self.db.run(CLAIMS.claim, self.db, run_id, self.owner, self.lease_s):
                return False  # another replica runs it
            self._tasks.spawn(run_id, lambda: self._scan(run_id))
        return True

    async def _scan(self, run_id: str) -> None:
        assert self.scanner is not None
        row = await self.db.run(
            self.db.query_one, "SELECT * FROM destination_scans WHERE run_id = ?", (run_id,)
        )
        if row is None:
            return
        where = f"{row['endpoint']}/{row['repository']}@{row['digest']}"
        req = scan_pb2.ScanImageRequest(
            image=common_pb2.ImageLocation(
                endpoint=row["endpoint"], repository=row["repository"], reference=row["digest"]
            )
        )
        backoff = Backoff(base=self.backoff_s, cap=60.0)
        attempt = int(row["attempts"])
        while True:
            attempt += 1
            await self.db.run(
                self.db.execute,
                "UPDATE destination_scans SET attempts = ? WHERE run_id = ?",
                (attempt, run_id),
            )
            try:
                report = await self.scanner.ScanImage(req, timeout=self.timeout_s)
            except grpc.aio.AioRpcError as err:
                problem = f"{err.code().name}: {err.details()}"
                if transient_rpc_error(err) and attempt < self.attempts:
                    delay = backoff.delay(attempt - 1)
                    log.info("scan of %s: %s; retrying in %.1fs", where, problem, delay)
                    await asyncio.sleep(delay)
                    continue
                await self._finish(run_id, FAILED, f"destination scan failed: {problem}")
                log.warning("scan on push of %s failed: %s", where, problem)
                return
            text = f"scanned at destination: {summary(report)}"
            await self._finish(run_id, DONE, text)
            log.info("scan on push of %s (run %s): %s", where, run_id, summary(report))
            return

    async def _finish(self, run_id: str, state: str, message: str) -> None:
        await self.db.run(self._record, run_id, state, message)

    def _record(self, run_id: str, state: str, message: str) -> None:
        # One transaction: the note on the run and the scan's end (the conditional UPDATE
        # keeps a replica that lost its claim from adding the note twice).
        with self.db.transaction() as c:
            ended = c.execute(
                "UPDATE destination_scans SET state = ?, message = ?, end_time = ?,"
                " claimed_by = '', claim_expires = 0 WHERE run_id = ? AND state = ?",
                (state, message, time.time(), run_id, PENDING),
            ).rowcount
            if ended:
                append_message(c, run_id, message)

    def release_claims(self, owner: str = "") -> None:
        with self.db.transaction() as c:
            CLAIMS.release(c, owner)
