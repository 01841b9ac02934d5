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
from gateway.runs import RunStore
from gateway.tasks import KeyedTasks
from servicekit.db import Database
from servicekit.retry import Backoff, transient_rpc_error

log = logging.getLogger("gateway.dest_scan")

PENDING, DONE, FAILED = "pending", "done", "failed"


def summary(report: scan_pb2.ScanReport) -> str:
    c = report.counts
    return (
        f"{len(report.components)} components, vulnerabilities: {c.critical} critical, "
        f"{c.major} major, {c.minor} minor"
    )


class DestinationScanner:
    """Owes, runs and records the scans of mirrored images at scan-on-push destinations."""

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
    ) -> None:
        self.db = db
        self.directory = directory
        self.scanner = scanner
        self.runs = runs
        self.timeout_s = timeout_s
        self.attempts = attempts
        self.backoff_s = backoff_s
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
        self.db.execute(
            "INSERT OR IGNORE INTO destination_scans (run_id, endpoint, repository, digest,"
            " state, create_time) VALUES (?, ?, ?, ?, ?, ?)",
            (run_id, dest.endpoint, dest.repository, tr.digest, PENDING, time.time()),
        )
        return True

    def start(self, run_id: str) -> None:
        """Run the scan owed for this run, if any (idempotent)."""
        row = self.db.query_one(
            "SELECT state FROM destination_scans WHERE run_id = ?", (run_id,)
        )
        if row is not None and row["state"] == PENDING:
            self._spawn(run_id)

    def resume(self) -> int:
        """After a restart: run every scan still owed."""
        rows = self.db.query(
            "SELECT run_id FROM destination_scans WHERE state = ? ORDER BY create_time",
            (PENDING,),
        )
        for row in rows:
            self._spawn(str(row["run_id"]))
        return len(rows)

    @property
    def active(self) -> int:
        return len(self._tasks)

    async def stop(self) -> None:
        await self._tasks.stop()

    def _spawn(self, run_id: str) -> None:
        if self.scanner is not None:
            self._tasks.spawn(run_id, lambda: self._scan(run_id))

    async def _scan(self, run_id: str) -> None:
        assert self.scanner is not None
        row = self.db.query_one("SELECT * FROM destination_scans WHERE run_id = ?", (run_id,))
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
            self.db.execute(
                "UPDATE destination_scans SET attempts = ? WHERE run_id = ?", (attempt, run_id)
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
                self._finish(run_id, FAILED, f"destination scan failed: {problem}")
                log.warning("scan on push of %s failed: %s", where, problem)
                return
            text = f"scanned at destination: {summary(report)}"
            self._finish(run_id, DONE, text)
            log.info("scan on push of %s (run %s): %s", where, run_id, summary(report))
            return

    def _finish(self, run_id: str, state: str, message: str) -> None:
        # The run first: a crash in between repeats the (cached) scan rather than lose the note.
        self.runs.append_message(run_id, message)
        self.db.execute(
            "UPDATE destination_scans SET state = ?, message = ?, end_time = ? WHERE run_id = ?",
            (state, message, time.time(), run_id),
        )
