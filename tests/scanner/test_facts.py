"""What a report admits it does not know: unrecognised package databases (components_unknown)
and the age of the vulnerability data it used (vulnerability_data_time); the database status."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from grpc import aio
from mirror.v1 import scan_pb2, scan_pb2_grpc

from registry_testkit.images import push
from scanner.servicer import ScanServicer
from servicekit.server import start_server
from tests.scanner import ocikit
from tests.scanner.layerkit import (
    ALPINE_INSTALLED,
    ALPINE_OS_RELEASE,
    layer,
    machine_dpkg,
    os_release,
    package_json,
    whiteout,
)
from tests.scanner.test_service import OSV, Resolver, loc

pytestmark = pytest.mark.registry
STATUS_REQ = scan_pb2.GetVulnerabilityDatabaseStatusRequest()
# A statically linked program: no package database anywhere.
BINARY = b"\x7fELF\x02\x01\x01" + bytes(200)


@pytest.fixture
async def stub(registry, tmp_path: Path) -> AsyncIterator[scan_pb2_grpc.ScanServiceStub]:
    servicer = ScanServicer(tmp_path / "data", Resolver({"dev": registry.url}))
    running = await start_server([servicer], "127.0.0.1:0")
    async with aio.insecure_channel(f"127.0.0.1:{running.port}") as ch:
        yield scan_pb2_grpc.ScanServiceStub(ch)
    await running.stop(0)


async def scan(stub: scan_pb2_grpc.ScanServiceStub, repo: str, ref: str) -> scan_pb2.ScanReport:
    return await stub.ScanImage(scan_pb2.ScanImageRequest(image=loc(repo, ref)))


async def test_an_image_without_a_recognised_package_database_has_unknown_components(
    stub: scan_pb2_grpc.ScanServiceStub, registry, tmp_path: Path
) -> None:
    scratch = ocikit.image(tmp_path, "scratch", [layer(
        {"etc/os-release": os_release(), "app/server": BINARY})])
    push(scratch, registry, "team/scratch")
    report = await scan(stub, "team/scratch", "scratch")
    assert report.components_unknown and list(report.components) == []
    assert report.os.id == "debian"  # an OS is not a package database

    alpine = ocikit.image(tmp_path, "alpine", [layer(
        {"etc/os-release": ALPINE_OS_RELEASE, "lib/apk/db/installed": ALPINE_INSTALLED})])
    push(alpine, registry, "team/alpine")
    report = await scan(stub, "team/alpine", "alpine")
    assert not report.components_unknown and len(report.components) == 5

    # The only package database removed by a later layer: nothing is known any more.
    gone = ocikit.image(tmp_path, "gone", [
        layer({"lib/apk/db/installed": ALPINE_INSTALLED}),
        layer({whiteout("lib/apk/db/installed"): b"", "app/server": BINARY}),
    ])
    push(gone, registry, "team/gone")
    report = await scan(stub, "team/gone", "gone")
    assert report.components_unknown and list(report.components) == []

    # One platform with unknown packages makes the index's components unknown.
    npm = layer({"app/node_modules/a/package.json": package_json("a", "1.0.0")})
    idx = ocikit.index(tmp_path, "multi", {"linux/amd64": [npm],
                                           "linux/arm64": [layer({"app/server": BINARY})]})
    push(idx, registry, "team/multi")
    report = await scan(stub, "team/multi", "multi")
    assert report.components_unknown and [c.name for c in report.components] == ["a"]
    known = ocikit.index(tmp_path, "multi-known", {"linux/amd64": [npm], "linux/arm64": [npm]})
    push(known, registry, "team/multi")
    assert not (await scan(stub, "team/multi", "multi-known")).components_unknown

    # A report made by another scanner lists the components: they are known.
    bom = {"bomFormat": "CycloneDX", "specVersion": "1.5", "components": [
        {"type": "library", "name": "musl", "version": "1.2.4",
         "purl": "pkg:apk/alpine/musl@1.2.4"}]}
    imported = await stub.ImportReport(scan_pb2.ImportReportRequest(
        digest=scratch.digest, repository="team/scratch", report=json.dumps(bom).encode()))
    assert not imported.components_unknown and [c.name for c in imported.components] == ["musl"]
    again = await stub.GetScan(scan_pb2.GetScanRequest(digest=scratch.digest,
                                                       repository="team/scratch"))
    assert not again.components_unknown


def _fixture_sources() -> Counter[str]:
    out: Counter[str] = Counter()
    for f in OSV.glob("*.json"):
        rec = json.loads(f.read_bytes())
        out.update({a["package"]["ecosystem"] for a in rec["affected"] if a.get("package")})
    return out


async def test_database_status_counts_records_and_import_times(
    stub: scan_pb2_grpc.ScanServiceStub,
) -> None:
    empty = await stub.GetVulnerabilityDatabaseStatus(STATUS_REQ)
    assert not empty.loaded and empty.records == 0 and list(empty.sources) == []
    assert not empty.HasField("update_time") and empty.database_version == "empty"

    before = datetime.now(UTC)
    imported = await stub.ImportVulnerabilities(
        scan_pb2.ImportVulnerabilitiesRequest(path=str(OSV)))
    after = datetime.now(UTC)
    status = await stub.GetVulnerabilityDatabaseStatus(STATUS_REQ)
    assert status.loaded and status.records == imported.imported == 12
    assert status.database_version == imported.database_version
    assert {s.name: s.records for s in status.sources} == dict(_fixture_sources())
    assert [s.name for s in status.sources] == sorted(s.name for s in status.sources)
    first = status.update_time.ToDatetime(UTC)
    assert before <= first <= after
    assert all(s.update_time.ToDatetime(UTC) == first for s in status.sources)

    # Re-importing one unchanged record changes no content, but says Debian:12 is current.
    same = await stub.ImportVulnerabilities(scan_pb2.ImportVulnerabilitiesRequest(
        data=(OSV / "DSA-5587-1.json").read_bytes()))
    assert same.imported == same.updated == 0 and same.skipped == 1
    status2 = await stub.GetVulnerabilityDatabaseStatus(STATUS_REQ)
    assert status2.database_version == status.database_version and status2.records == 12
    times = {s.name: s.update_time.ToDatetime(UTC) for s in status2.sources}
    assert times["Debian:12"] == status2.update_time.ToDatetime(UTC) > first
    assert times["PyPI"] == times["npm"] == times["Debian:11"] == first

    # An import of nothing valid moves nothing.
    bad = await stub.ImportVulnerabilities(scan_pb2.ImportVulnerabilitiesRequest(
        data=json.dumps([{"id": "X-1"}]).encode()))
    assert bad.skipped == 1
    assert (await stub.GetVulnerabilityDatabaseStatus(STATUS_REQ)).update_time == (
        status2.update_time)


async def test_reports_say_how_old_their_vulnerability_data_is(
    stub: scan_pb2_grpc.ScanServiceStub, registry, tmp_path: Path
) -> None:
    names, paras, _ = machine_dpkg(5)
    img = ocikit.image(tmp_path, "1.0", [layer({
        "etc/os-release": os_release(),  # this machine: Debian 12
        "var/lib/dpkg/status": "\n".join(paras[n] for n in names).encode(),
        "srv/node_modules/lodash/package.json": package_json("lodash", "4.17.20"),
    })])
    push(img, registry, "team/app")
    report = await scan(stub, "team/app", "1.0")
    assert not report.HasField("vulnerability_data_time") and report.counts.all == 0

    # npm data only: lodash's finding is real, but nobody looked at the Debian packages.
    await stub.ImportVulnerabilities(scan_pb2.ImportVulnerabilitiesRequest(
        data=(OSV / "GHSA-35jh-r3h4-6jhm.json").read_bytes()))
    report = await stub.GetScan(scan_pb2.GetScanRequest(digest=img.digest))
    assert [v.id for v in report.vulnerabilities] == ["GHSA-35jh-r3h4-6jhm"]
    assert not report.HasField("vulnerability_data_time")

    await stub.ImportVulnerabilities(scan_pb2.ImportVulnerabilitiesRequest(path=str(OSV)))
    status = await stub.GetVulnerabilityDatabaseStatus(STATUS_REQ)
    report = await scan(stub, "team/app", "1.0")
    assert report.vulnerability_data_time == status.update_time
    assert report.database_version == status.database_version

    # Only npm re-confirmed: the Debian:12 data this image also used is as old as before.
    await stub.ImportVulnerabilities(scan_pb2.ImportVulnerabilitiesRequest(
        data=(OSV / "GHSA-35jh-r3h4-6jhm.json").read_bytes()))
    cached = await scan(stub, "team/app", "1.0")
    assert cached.vulnerability_data_time == status.update_time
    # Everything re-confirmed: the cached report is re-matched and says so (no stale time).
    await stub.ImportVulnerabilities(scan_pb2.ImportVulnerabilitiesRequest(path=str(OSV)))
    newest = await stub.GetVulnerabilityDatabaseStatus(STATUS_REQ)
    cached = await scan(stub, "team/app", "1.0")
    assert cached.vulnerability_data_time == newest.update_time != status.update_time
    assert cached.database_version == status.database_version

    # An image needing no ecosystem (unknown components) takes the database's time.
    scratch = ocikit.image(tmp_path, "scratch", [layer({"app/server": BINARY})])
    push(scratch, registry, "team/scratch")
    report = await scan(stub, "team/scratch", "scratch")
    assert report.components_unknown and report.vulnerability_data_time == newest.update_time
