"""mirror.v1.ScanService: scans images from endpoints, caches reports per (digest, repository).

Reports and the vulnerability database live in the scanner's database (scanner.store: SQLite
under the data folder, or PostgreSQL); every call to it runs on the database's threads
(`db.run`), never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from google.protobuf import timestamp_pb2
from grpc import aio
from mirror.v1 import scan_pb2, scan_pb2_grpc

from registry_client import errors as registry_errors
from registry_client.resolver import EndpointResolver
from scanner.bounds import TOO_BIG, bound_report
from scanner.convert import report_pb
from scanner.errors import ScanError
from scanner.layers import Limits
from scanner.model import ImageFacts
from scanner.reports import parse_report
from scanner.scan import apply_vulnerabilities, merge_report, scan_image
from scanner.store import open_database
from scanner.vulndb import ImportResult, VulnDB, iter_bytes, iter_path
from servicekit import errors
from servicekit.db import Row
from servicekit.metrics import SCANS
from servicekit.server import service_full_name

log = logging.getLogger("scanner.servicer")

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
# Refusals caused by the input the caller sent (not by the image's contents).
_CALLER_REASONS = ("REPORT_INVALID", "IMPORT_SOURCE_MISSING", "IMPORT_TOO_LARGE",
                   "IMPORT_UNREADABLE")
# Refusals because the image is beyond the scan's bounds (not malformed): "scan too big".
_TOO_BIG_REASONS = (TOO_BIG, "FILE_TOO_LARGE", "TOO_MUCH_METADATA", "TOO_MANY_MEMBERS",
                    "IMAGE_TOO_LARGE")


def scan_error(err: ScanError) -> errors.ApiError:
    """A refused image is FAILED_PRECONDITION (the image, not the request, is at fault)."""
    if err.reason in _CALLER_REASONS:
        return errors.invalid_argument(err.message, reason=err.reason)
    if err.reason == TOO_BIG:
        message = err.message  # already "scan too big: ..."
    elif err.reason in _TOO_BIG_REASONS:
        message = f"scan too big ({err.reason}): {err.message}"
    else:
        message = f"image refused ({err.reason}): {err.message}"
    # FAILED_PRECONDITION, not RESOURCE_EXHAUSTED: callers retry the latter as transient,
    # and the same image is just as big next time.
    return errors.failed_precondition(
        message, [("SCAN", err.reason, err.message)], reason=err.reason)


def registry_error(err: registry_errors.RegistryError, where: str) -> errors.ApiError:
    msg = f"{where}: {err}"
    if isinstance(err, registry_errors.NotFound):
        return errors.not_found(msg, reason="IMAGE_NOT_FOUND")
    if isinstance(err, (registry_errors.AuthenticationError, registry_errors.PermissionDenied)):
        return errors.failed_precondition(
            msg, [("REGISTRY_ACCESS", where, str(err))], reason="REGISTRY_ACCESS_DENIED")
    if isinstance(err, registry_errors.DigestMismatch):
        return errors.failed_precondition(msg, reason="DIGEST_MISMATCH")
    return errors.unavailable(msg)


class ScanServicer(scan_pb2_grpc.ScanServiceServicer):
    """Mountable ScanService over a data folder (scanner.db) or `database` (a postgresql://
    URL), and an endpoint resolver."""

    service_name = service_full_name(scan_pb2.DESCRIPTOR, "ScanService")

    def __init__(
        self,
        data_dir: str | Path,
        endpoints: EndpointResolver | None,
        *,
        limits: Limits | None = None,
        max_concurrent_scans: int = 2,
        import_roots: Sequence[str | Path] = (),
        database: str = "",
    ) -> None:
        self.db = open_database(data_dir, database)
        self.vulndb = VulnDB(self.db)
        self.endpoints = endpoints
        self.limits = limits or Limits()
        self._scans = asyncio.Semaphore(max_concurrent_scans)
        self._digest_locks: dict[str, asyncio.Lock] = {}
        self._import_lock = asyncio.Lock()
        self.import_roots = [Path(p).resolve() for p in import_roots]
        # Told (digest, repository) after an imported report is saved, so that the image's
        # policies can be evaluated again (the embedded stack wires the gateway here).
        self.on_report: Callable[[str, str], Coroutine[Any, Any, object]] | None = None
        self._report_tasks: set[asyncio.Task[object]] = set()

    def mount(self, server: aio.Server) -> None:
        scan_pb2_grpc.add_ScanServiceServicer_to_server(self, server)

    # -- cache -----------------------------------------------------------------------------
    # One report per (digest, repository): equal digests at a source and at its mirror are the
    # same bytes, but each registry's copy is scanned (and reported) on its own.

    def _row(self, digest: str, repository: str | None) -> Row | None:
        """The report row of `repository`'s copy; None: the most recently scanned copy
        (blocking: called through db.run)."""
        if repository is None:
            # Ties (the same microsecond) broken by repository: the same on both engines.
            return self.db.query_one(
                "SELECT facts, database_version, database_time, report FROM reports "
                "WHERE digest=? ORDER BY scanned_at DESC, repository DESC LIMIT 1", (digest,))
        return self.db.query_one(
            "SELECT facts, database_version, database_time, report FROM reports "
            "WHERE digest=? AND repository=?", (digest, repository))

    async def _cached(self, digest: str, repository: str | None) -> ImageFacts | None:
        row = await self.db.run(self._row, digest, repository)
        return ImageFacts.from_json(row["facts"]) if row else None

    async def _refresh(self) -> None:
        """On PostgreSQL, take up vulnerability data another scanner imported meanwhile."""
        if self.db.dialect == "postgresql":
            await self.db.run(self.vulndb.refresh)

    def _save(self, facts: ImageFacts) -> scan_pb2.ScanReport:
        """Store and return the (bounded) report; ScanError(SCAN_TOO_BIG): nothing stored.

        Called in a worker thread: a report of many thousand components takes a while.
        """
        now = datetime.now(UTC)
        report = bound_report(report_pb(facts, now), self.limits.max_report_bytes)
        self.db.execute(
            "INSERT INTO reports (digest, repository, facts, database_version, database_time,"
            " report, scanned_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(digest, repository) DO UPDATE SET "
            "facts=excluded.facts, database_version=excluded.database_version, "
            "database_time=excluded.database_time, "
            "report=excluded.report, scanned_at=excluded.scanned_at",
            (facts.digest, facts.repository, facts.to_json(), facts.database_version,
             facts.database_time, report.SerializeToString(), now.isoformat()),
        )
        return report

    def _database_time(self) -> str:
        t = self.vulndb.update_time
        return t.isoformat() if t is not None else ""

    async def _fresh(self, digest: str, repository: str | None) -> scan_pb2.ScanReport | None:
        """The cached report, re-matched first when the vulnerability DB changed since.

        "Changed" includes an import that only confirmed the data (its time moved): the
        report's vulnerability_data_time must be that of the data it was matched against.
        """
        await self._refresh()
        row = await self.db.run(self._row, digest, repository)
        if row is None:
            return None
        report = bytes(row["report"])  # PostgreSQL's bytea arrives as a memoryview
        # A report saved under a larger size limit is cut again rather than served whole.
        if (row["database_version"] == self.vulndb.version
                and row["database_time"] == self._database_time()
                and len(report) <= self.limits.max_report_bytes):
            return scan_pb2.ScanReport.FromString(report)
        facts = ImageFacts.from_json(row["facts"])
        await self.db.run(apply_vulnerabilities, facts, self.vulndb)
        return await self.db.run(self._save, facts)

    def _lock(self, digest: str, repository: str) -> asyncio.Lock:
        return self._digest_locks.setdefault(f"{digest} {repository}", asyncio.Lock())

    # -- RPCs ------------------------------------------------------------------------------

    async def ScanImage(
        self, request: scan_pb2.ScanImageRequest, context: aio.ServicerContext
    ) -> scan_pb2.ScanReport:
        img = request.image
        missing = [(f"image.{f}", "required") for f in ("endpoint", "repository", "reference")
                   if not getattr(img, f)]
        if missing:
            raise errors.invalid_argument("image endpoint, repository and reference are required",
                                          missing)
        if self.endpoints is None:
            raise errors.failed_precondition(
                "this scanner has no endpoint access configured", reason="NO_ENDPOINTS")
        where = f"{img.endpoint}/{img.repository}:{img.reference}"
        try:
            async with self.endpoints.client_for(img.endpoint) as rc:
                manifest = await rc.get_manifest(img.repository, img.reference)
                digest = manifest.digest
                async with self._lock(digest, img.repository):
                    if not request.force:
                        cached = await self._fresh(digest, img.repository)
                        if cached is not None:
                            SCANS.labels(result="cached").inc()
                            return cached
                    async with self._scans:
                        facts = await scan_image(
                            rc, img.repository, digest, vulndb=None, limits=self.limits)
                    await self._refresh()
                    await self.db.run(apply_vulnerabilities, facts, self.vulndb)
                    SCANS.labels(result="ok").inc()
                    return await self.db.run(self._save, facts)
        except ScanError as err:
            SCANS.labels(result="refused").inc()
            log.warning("scan of %s refused: %s", where, err)
            raise scan_error(err) from None
        except registry_errors.RegistryError as err:
            SCANS.labels(result="error").inc()
            raise registry_error(err, where) from None

    async def GetScan(
        self, request: scan_pb2.GetScanRequest, context: aio.ServicerContext
    ) -> scan_pb2.ScanReport:
        if not _DIGEST.match(request.digest):
            raise errors.invalid_argument(
                "digest must be sha256:<64 hex>", [("digest", "not a sha256 digest")])
        try:
            report = await self._fresh(request.digest, request.repository or None)
        except ScanError as err:
            raise scan_error(err) from None
        if report is None:
            where = f" in {request.repository}" if request.repository else ""
            raise errors.not_found(f"no scan of {request.digest}{where}", reason="SCAN_NOT_FOUND")
        return report

    async def ImportVulnerabilities(
        self, request: scan_pb2.ImportVulnerabilitiesRequest, context: aio.ServicerContext
    ) -> scan_pb2.ImportVulnerabilitiesResponse:
        which = request.WhichOneof("source")
        if which is None or (which == "data" and not request.data):
            raise errors.invalid_argument(
                "give a path or data", [("source", "one of path or data is required")])
        if which == "path":
            path = Path(request.path).resolve()
            if self.import_roots and not any(path.is_relative_to(r) for r in self.import_roots):
                raise errors.invalid_argument(
                    "path is outside the folders this scanner imports from",
                    [("path", "not under an allowed import folder")])
            if not path.exists():
                raise errors.invalid_argument(
                    f"{request.path} does not exist", [("path", "no such file or folder")])
            sources = iter_path(path)
        else:
            sources = iter_bytes(request.data)
        async with self._import_lock:
            try:
                await self._refresh()
                result: ImportResult = await self.db.run(self.vulndb.import_sources, sources)
            except ScanError as err:
                raise scan_error(err) from None
        log.info("imported OSV records: %d new, %d updated, %d skipped; database %s",
                 result.imported, result.updated, result.skipped, result.database_version)
        return scan_pb2.ImportVulnerabilitiesResponse(
            imported=result.imported, updated=result.updated, skipped=result.skipped,
            database_version=result.database_version, errors=result.errors)

    async def ImportReport(
        self, request: scan_pb2.ImportReportRequest, context: aio.ServicerContext
    ) -> scan_pb2.ScanReport:
        violations = []
        if not _DIGEST.match(request.digest):
            violations.append(("digest", "must be sha256:<64 hex>"))
        if not request.report:
            violations.append(("report", "required"))
        if request.format and request.format.lower() not in ("cyclonedx", "spdx", "trivy"):
            violations.append(("format", "one of cyclonedx, spdx, trivy, or empty to detect"))
        if violations:
            raise errors.invalid_argument("invalid ImportReport request", violations)
        try:
            report = await asyncio.to_thread(parse_report, request.report, request.format)
        except ScanError as err:
            raise scan_error(err) from None
        # Without a repository the report completes the most recent scan of the digest.
        facts = await self._cached(request.digest, request.repository or None)
        repository = request.repository or (facts.repository if facts else "")
        async with self._lock(request.digest, repository):
            facts = await self._cached(request.digest, repository) or ImageFacts(
                digest=request.digest, repository=repository)
            merge_report(facts, report.format, report)
            await self._refresh()
            await self.db.run(apply_vulnerabilities, facts, self.vulndb)
            try:
                saved = await self.db.run(self._save, facts)
            except ScanError as err:
                raise scan_error(err) from None
        if self.on_report is not None and repository:
            task: asyncio.Task[object] = asyncio.create_task(
                self.on_report(request.digest, repository)
            )
            self._report_tasks.add(task)
            task.add_done_callback(self._report_done)
        return saved

    def _report_done(self, task: asyncio.Task[object]) -> None:
        self._report_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("re-evaluating after an imported report failed: %s", task.exception())

    async def GetVulnerabilityDatabaseStatus(
        self, request: scan_pb2.GetVulnerabilityDatabaseStatusRequest,
        context: aio.ServicerContext,
    ) -> scan_pb2.VulnerabilityDatabaseStatus:
        await self._refresh()
        records, sources = await self.db.run(self.vulndb.status)
        status = scan_pb2.VulnerabilityDatabaseStatus(
            loaded=records > 0, database_version=self.vulndb.version, records=records,
            update_time=_timestamp(self.vulndb.update_time) if records else None,
            sources=[scan_pb2.VulnerabilitySource(
                name=s.name, records=s.records, update_time=_timestamp(s.update_time))
                for s in sources],
        )
        return status


def _timestamp(t: datetime | None) -> timestamp_pb2.Timestamp | None:
    if t is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(t)
    return ts


__all__ = ["EndpointResolver", "ScanServicer"]
