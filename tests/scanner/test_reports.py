"""Reports from other scanners (CycloneDX, SPDX, Trivy JSON, DSSE) and ImportReport."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc import aio
from mirror.v1 import common_pb2, scan_pb2, scan_pb2_grpc

from scanner.errors import ScanError
from scanner.reports import detect_format, parse_attestation, parse_report
from scanner.servicer import ScanServicer
from servicekit.server import start_server

OSV = Path(__file__).parent / "osv"
DIGEST = "sha256:" + "ab" * 32

CYCLONEDX = {
    "bomFormat": "CycloneDX", "specVersion": "1.5",
    "components": [
        {"type": "operating-system", "name": "debian", "version": "12"},
        {"bom-ref": "c1", "type": "library", "name": "libcurl4", "version": "7.88.1-10+deb12u4",
         "purl": "pkg:deb/debian/libcurl4@7.88.1-10%2Bdeb12u4?distro=debian-12&upstream=curl",
         "licenses": [{"license": {"id": "curl"}}]},
        {"bom-ref": "c2", "type": "library", "name": "lodash", "version": "4.17.20",
         "purl": "pkg:npm/lodash@4.17.20", "licenses": [{"expression": "MIT"}]},
    ],
    "vulnerabilities": [
        {"id": "CVE-2099-0001", "ratings": [{"score": 5.0, "method": "CVSSv31"}],
         "affects": [{"ref": "c2"}], "description": "made-up finding of the other scanner"},
    ],
}

SPDX = {
    "spdxVersion": "SPDX-2.3", "SPDXID": "SPDXRef-DOCUMENT", "name": "img",
    "packages": [
        {"SPDXID": "SPDXRef-p1", "name": "urllib3", "versionInfo": "2.2.1",
         "licenseConcluded": "MIT", "externalRefs": [
             {"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
              "referenceLocator": "pkg:pypi/urllib3@2.2.1"}]},
        {"SPDXID": "SPDXRef-p2", "name": "zlib", "versionInfo": "1.3.1-r0",
         "licenseDeclared": "Zlib", "externalRefs": [
             {"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
              "referenceLocator": "pkg:apk/alpine/zlib@1.3.1-r0?distro=3.19.1"}]},
    ],
}

TRIVY = {
    "SchemaVersion": 2, "ArtifactName": "example:1", "ArtifactType": "container_image",
    "Metadata": {"OS": {"Family": "alpine", "Name": "3.19.1"}},
    "Results": [{
        "Target": "example:1 (alpine 3.19.1)", "Class": "os-pkgs", "Type": "alpine",
        "Packages": [{"Name": "libcrypto3", "Version": "3.1.4-r5", "SrcName": "openssl",
                      "SrcVersion": "3.1.4-r5", "Licenses": ["Apache-2.0"]}],
        "Vulnerabilities": [
            {"VulnerabilityID": "CVE-2024-2511", "PkgName": "libcrypto3",
             "InstalledVersion": "3.1.4-r5", "FixedVersion": "3.1.4-r6", "Severity": "LOW"},
            {"VulnerabilityID": "CVE-2024-4741", "PkgName": "libcrypto3",
             "InstalledVersion": "3.1.4-r5", "FixedVersion": "3.1.5-r0", "Severity": "HIGH",
             "CVSS": {"nvd": {"V3Vector": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H",
                              "V3Score": 9.8}}},
        ],
    }],
}


def test_detect_and_parse_cyclonedx() -> None:
    facts = parse_report(json.dumps(CYCLONEDX).encode())
    assert facts.format == "cyclonedx" and facts.os.id == "debian"
    comps = {c.name: c for c in facts.components}
    assert comps["libcurl4"].type == "deb" and comps["libcurl4"].source == "curl"
    assert comps["lodash"].licenses == ("MIT",)
    (v,) = facts.vulnerabilities
    assert (v.id, v.component, v.score) == ("CVE-2099-0001", "lodash", 5.0)


def test_parse_spdx_and_trivy() -> None:
    spdx = parse_report(json.dumps(SPDX).encode())
    assert {(c.name, c.type, c.licenses) for c in spdx.components} == {
        ("urllib3", "pypi", ("MIT",)), ("zlib", "apk", ("Zlib",))}
    trivy = parse_report(json.dumps(TRIVY).encode(), "trivy")
    assert trivy.os.id == "alpine"
    assert [(v.id, v.score) for v in trivy.vulnerabilities] == [
        ("CVE-2024-2511", 2.0), ("CVE-2024-4741", 9.8)]
    assert trivy.components[0].source == "openssl"


def test_bad_reports_are_clear_errors() -> None:
    for data, fmt in ((b"not json", ""), (b"[]", ""), (b"{}", ""), (b"{}", "xml")):
        with pytest.raises(ScanError) as exc:
            parse_report(data, fmt)
        assert exc.value.reason == "REPORT_INVALID"
    assert detect_format(SPDX) == "spdx"


def test_dsse_attestation_with_spdx_predicate() -> None:
    statement = {"predicateType": "https://spdx.dev/Document", "predicate": SPDX}
    env = {"payloadType": "application/vnd.in-toto+json",
           "payload": base64.b64encode(json.dumps(statement).encode()).decode()}
    facts = parse_attestation(json.dumps(env).encode())
    assert facts is not None and len(facts.components) == 2
    other = {"predicateType": "https://slsa.dev/provenance/v0.2", "predicate": {}}
    env["payload"] = base64.b64encode(json.dumps(other).encode()).decode()
    assert parse_attestation(json.dumps(env).encode()) is None


@pytest.fixture
async def stub(tmp_path: Path, db_target: str) -> AsyncIterator[scan_pb2_grpc.ScanServiceStub]:
    """A scanner on either engine (SQLite file, PostgreSQL database)."""
    servicer = ScanServicer(tmp_path / "data", None, database=db_target)
    running = await start_server([servicer], "127.0.0.1:0")
    async with aio.insecure_channel(f"127.0.0.1:{running.port}") as ch:
        yield scan_pb2_grpc.ScanServiceStub(ch)
    await running.stop(0)
    servicer.db.close()


async def test_import_report_merges_and_matches_the_db(
    stub: scan_pb2_grpc.ScanServiceStub,
) -> None:
    await stub.ImportVulnerabilities(scan_pb2.ImportVulnerabilitiesRequest(path=str(OSV)))
    r = await stub.ImportReport(scan_pb2.ImportReportRequest(
        digest=DIGEST, repository="team/app", report=json.dumps(CYCLONEDX).encode()))
    assert list(r.sources) == ["cyclonedx"] and r.repository == "team/app"
    # DSA-5587-1 (curl, unscored), GHSA-35jh (lodash 7.2) from the DB + the report's own 5.0.
    assert sorted(v.id for v in r.vulnerabilities) == [
        "CVE-2099-0001", "DSA-5587-1", "GHSA-35jh-r3h4-6jhm"]
    assert (r.counts.critical, r.counts.major, r.counts.minor, r.counts.all) == (1, 1, 0, 3)
    # a second report for the same digest adds to the first; the same one again changes nothing
    r2 = await stub.ImportReport(scan_pb2.ImportReportRequest(
        digest=DIGEST, format="spdx", report=json.dumps(SPDX).encode()))
    assert list(r2.sources) == ["cyclonedx", "spdx"]
    assert r2.counts.all == 4  # + GHSA-34jh-p97f-mpxf on urllib3 2.2.1
    r3 = await stub.ImportReport(scan_pb2.ImportReportRequest(
        digest=DIGEST, format="spdx", report=json.dumps(SPDX).encode()))
    assert r3.counts == r2.counts and len(r3.components) == len(r2.components)
    got = await stub.GetScan(scan_pb2.GetScanRequest(digest=DIGEST))
    assert got.counts == r2.counts
    with pytest.raises(aio.AioRpcError) as exc:
        await stub.ScanImage(scan_pb2.ScanImageRequest(image=common_pb2.ImageLocation(
            endpoint="dev", repository="a", reference="b")))
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
