"""Reports are kept per (digest, repository): a source's and its mirror's never overwrite."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from grpc import aio
from mirror.v1 import common_pb2, scan_pb2, scan_pb2_grpc

from registry_testkit.faultproxy import FaultProxy
from registry_testkit.images import push
from registry_testkit.registry import RegistryProcess
from scanner import store
from scanner.convert import report_pb
from scanner.model import Component, ImageFacts
from scanner.servicer import ScanServicer
from servicekit.db import Database
from servicekit.server import start_server
from tests.scanner import ocikit
from tests.scanner.layerkit import layer, package_json
from tests.scanner.test_service import Resolver

pytestmark = pytest.mark.registry


@pytest.fixture
def mirror_proxy(registry2: RegistryProcess) -> Iterator[FaultProxy]:
    """The mirror registry behind a proxy that logs every request (to see what was read)."""
    with FaultProxy(registry2.url) as proxy:
        yield proxy


@pytest.fixture
async def stub(
    registry: RegistryProcess, mirror_proxy: FaultProxy, tmp_path: Path
) -> AsyncIterator[scan_pb2_grpc.ScanServiceStub]:
    resolver = Resolver({"dev": registry.url, "qa": mirror_proxy.url})
    servicer = ScanServicer(tmp_path / "data", resolver)
    running = await start_server([servicer], "127.0.0.1:0")
    async with aio.insecure_channel(f"127.0.0.1:{running.port}") as ch:
        yield scan_pb2_grpc.ScanServiceStub(ch)
    await running.stop(0)


def scan_req(endpoint: str, repo: str, ref: str) -> scan_pb2.ScanImageRequest:
    return scan_pb2.ScanImageRequest(
        image=common_pb2.ImageLocation(endpoint=endpoint, repository=repo, reference=ref)
    )


async def test_source_and_mirror_reports_are_kept_apart(
    stub: scan_pb2_grpc.ScanServiceStub,
    registry: RegistryProcess,
    registry2: RegistryProcess,
    mirror_proxy: FaultProxy,
    tmp_path: Path,
) -> None:
    img = ocikit.image(tmp_path, "1.0", [layer({
        "srv/node_modules/left-pad/package.json": package_json("left-pad", "1.3.0",
                                                               license="WTFPL")})])
    push(img, registry, "team/app")
    push(img, registry2, "mirror/app")

    src = await stub.ScanImage(scan_req("dev", "team/app", "1.0"))
    assert src.repository == "team/app" and src.digest == img.digest
    assert mirror_proxy.requests("GET", r"/blobs/") == []
    dst = await stub.ScanImage(scan_req("qa", "mirror/app", img.digest))
    assert dst.repository == "mirror/app" and dst.digest == img.digest
    # The mirror's copy was read from the mirror, not answered from the source's report.
    assert mirror_proxy.requests("GET", r"^/v2/mirror/app/blobs/")
    assert [c.name for c in dst.components] == [c.name for c in src.components] == ["left-pad"]

    latest = await stub.GetScan(scan_pb2.GetScanRequest(digest=img.digest))
    assert latest.repository == "mirror/app"
    of_src = await stub.GetScan(scan_pb2.GetScanRequest(digest=img.digest, repository="team/app"))
    assert of_src.repository == "team/app" and of_src.scan_time == src.scan_time
    with pytest.raises(aio.AioRpcError) as exc:
        await stub.GetScan(scan_pb2.GetScanRequest(digest=img.digest, repository="nowhere"))
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND
    assert "nowhere" in exc.value.details()

    # Scanning the source again is answered from its own cached report.
    again = await stub.ScanImage(scan_req("dev", "team/app", "1.0"))
    assert again.scan_time == src.scan_time and again.repository == "team/app"


async def test_import_report_without_repository_completes_the_latest_scan(
    stub: scan_pb2_grpc.ScanServiceStub, registry: RegistryProcess, tmp_path: Path
) -> None:
    img = ocikit.image(tmp_path, "2.0", [layer({"etc/os-release": b"ID=alpine\n"})])
    push(img, registry, "team/base")
    await stub.ScanImage(scan_req("dev", "team/base", "2.0"))
    bom = (b'{"bomFormat":"CycloneDX","specVersion":"1.5","components":[{"type":"library",'
           b'"name":"requests","version":"2.30.0","purl":"pkg:pypi/requests@2.30.0"}]}')
    merged = await stub.ImportReport(scan_pb2.ImportReportRequest(digest=img.digest, report=bom))
    assert merged.repository == "team/base" and merged.os.id == "alpine"
    assert "requests" in {c.name for c in merged.components}
    got = await stub.GetScan(scan_pb2.GetScanRequest(digest=img.digest, repository="team/base"))
    assert got.scan_time == merged.scan_time


async def test_reports_of_the_first_schema_keep_their_repository(
    tmp_path: Path, db_target: str
) -> None:
    digest = "sha256:" + "ab" * 32
    facts = ImageFacts(digest=digest, repository="team/old", database_version="empty",
                       components=[Component(name="zlib", version="1.3", type="apk")])
    old = Database(db_target, store.MIGRATIONS[:1], schema="scanner")
    old.execute(
        "INSERT INTO reports (digest, facts, database_version, report, scanned_at)"
        " VALUES (?, ?, ?, ?, ?)",
        (digest, facts.to_json(), "empty",
         report_pb(facts, datetime.now(UTC)).SerializeToString(), datetime.now(UTC).isoformat()),
    )
    old.close()

    servicer = ScanServicer(tmp_path, None, database=db_target)  # migrates on open
    try:
        assert servicer.db.schema_version == len(store.MIGRATIONS)
        got = await servicer.GetScan(
            scan_pb2.GetScanRequest(digest=digest, repository="team/old"), None)  # type: ignore[arg-type]
        assert got.repository == "team/old" and [c.name for c in got.components] == ["zlib"]
    finally:
        servicer.db.close()
