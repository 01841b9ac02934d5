"""The scanner on PostgreSQL (`--database`, schema "scanner"): reports and vulnerability data
outlive the process, and scanners sharing the database see each other's imports."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest
from grpc import aio
from mirror.v1 import scan_pb2, scan_pb2_grpc

from scanner.servicer import ScanServicer
from scanner.store import open_database
from scanner.vulndb import VulnDB, iter_path
from servicekit.server import start_server
from tests.scanner.processes import start
from tests.scanner.test_reports import CYCLONEDX, DIGEST, OSV


@asynccontextmanager
async def scanner(pg_url: str, data: Path) -> AsyncIterator[scan_pb2_grpc.ScanServiceStub]:
    servicer = await asyncio.to_thread(ScanServicer, data, None, database=pg_url)
    running = await start_server([servicer], "127.0.0.1:0")
    try:
        async with aio.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            yield scan_pb2_grpc.ScanServiceStub(ch)
    finally:
        await running.stop(0)
        servicer.db.close()


def _import_report() -> scan_pb2.ImportReportRequest:
    return scan_pb2.ImportReportRequest(
        digest=DIGEST, repository="team/app", report=json.dumps(CYCLONEDX).encode())


async def test_an_import_on_one_scanner_is_used_by_the_other(pg_url: str, tmp_path: Path) -> None:
    async with scanner(pg_url, tmp_path / "a") as a, scanner(pg_url, tmp_path / "b") as b:
        before = await a.ImportReport(_import_report())
        assert [v.id for v in before.vulnerabilities] == ["CVE-2099-0001"]  # the report's own
        # Both import the same records at once: they take turns, nothing is held twice.
        imported = await asyncio.gather(
            a.ImportVulnerabilities(scan_pb2.ImportVulnerabilitiesRequest(path=str(OSV))),
            b.ImportVulnerabilities(scan_pb2.ImportVulnerabilitiesRequest(path=str(OSV))),
        )
        records = len(list(OSV.glob("*.json")))
        assert sorted(r.imported for r in imported) == [0, records]
        assert imported[0].database_version == imported[1].database_version
        for stub in (a, b):
            status = await stub.GetVulnerabilityDatabaseStatus(
                scan_pb2.GetVulnerabilityDatabaseStatusRequest())
            assert (status.records, status.database_version) == (
                records, imported[0].database_version)
        # The report a saved is re-matched by b against the data both share.
        got = await b.GetScan(scan_pb2.GetScanRequest(digest=DIGEST, repository="team/app"))
        assert got.database_version == imported[0].database_version
        assert sorted(v.id for v in got.vulnerabilities) == [
            "CVE-2099-0001", "DSA-5587-1", "GHSA-35jh-r3h4-6jhm"]


def test_an_import_that_finds_another_scanners_records_reports_their_version(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    alone = VulnDB(open_database(tmp_path / "sqlite"))
    expected = alone.import_sources(iter_path(OSV)).database_version
    a = VulnDB(open_database(tmp_path / "a", pg_url))
    b = VulnDB(open_database(tmp_path / "b", pg_url))
    # a has stored its records but not yet written the version they make.
    monkeypatch.setattr(a, "_refresh_version", lambda: None)
    assert a.import_sources(iter_path(OSV)).imported == len(list(OSV.glob("*.json")))
    got = b.import_sources(iter_path(OSV))
    assert got.imported == 0 and got.database_version == b.version == expected
    for v in (alone, a, b):
        v.db.close()


def test_a_restarted_scanner_process_keeps_its_reports(pg_url: str, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    first = start("scanner", logs, "--data", str(tmp_path / "one"), "--database", pg_url)
    try:
        with grpc.insecure_channel(first.address) as ch:
            stub = scan_pb2_grpc.ScanServiceStub(ch)
            imported = stub.ImportVulnerabilities(
                scan_pb2.ImportVulnerabilitiesRequest(path=str(OSV)), timeout=30)
            saved = stub.ImportReport(_import_report(), timeout=30)
    finally:
        first.stop(signal.SIGKILL)
    # Another data folder: everything the scanner keeps is in PostgreSQL.
    second = start("scanner", logs, "--data", str(tmp_path / "two"), "--database", pg_url)
    try:
        with grpc.insecure_channel(second.address) as ch:
            stub = scan_pb2_grpc.ScanServiceStub(ch)
            got = stub.GetScan(scan_pb2.GetScanRequest(digest=DIGEST, repository="team/app"),
                               timeout=10)
            status = stub.GetVulnerabilityDatabaseStatus(
                scan_pb2.GetVulnerabilityDatabaseStatusRequest(), timeout=10)
    finally:
        assert second.stop() == 0, second.output()
    assert got == saved
    assert status.loaded and status.database_version == imported.database_version
    assert not list(tmp_path.glob("*/scanner.db"))
