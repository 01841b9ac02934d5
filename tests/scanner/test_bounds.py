"""Bounded scans: a package-database bomb is refused quickly in little memory ("scan too big"),
and a report over the size limit has its vulnerability list cut (counts kept), never its
components."""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import psutil
import pytest
from grpc import aio
from mirror.v1 import scan_pb2, scan_pb2_grpc

from registry_testkit.images import push
from scanner.layers import Limits
from scanner.servicer import ScanServicer
from servicekit.server import start_server
from tests.scanner import ocikit
from tests.scanner.layerkit import layer, os_release, package_json
from tests.scanner.test_service import Resolver, _error_info, loc

pytestmark = pytest.mark.registry


async def serve(registry, data: Path, limits: Limits | None = None) -> AsyncIterator[
        scan_pb2_grpc.ScanServiceStub]:
    servicer = ScanServicer(data, Resolver({"dev": registry.url}), limits=limits)
    running = await start_server([servicer], "127.0.0.1:0")
    async with aio.insecure_channel(f"127.0.0.1:{running.port}") as ch:
        yield scan_pb2_grpc.ScanServiceStub(ch)
    await running.stop(0)


@pytest.fixture
async def stub(registry, tmp_path: Path) -> AsyncIterator[scan_pb2_grpc.ScanServiceStub]:
    async for s in serve(registry, tmp_path / "data"):
        yield s


async def loop_lag(done: asyncio.Event) -> float:
    """The longest the event loop (which also runs the servicer) went without a turn."""
    worst, last = 0.0, time.monotonic()
    while not done.is_set():
        await asyncio.sleep(0.01)
        now = time.monotonic()
        worst, last = max(worst, now - last), now
    return worst


@contextmanager
def peak_rss() -> Iterator[dict[str, int]]:
    """Samples this process's RSS every 10 ms; `peak` minus `base` is what the block added."""
    proc = psutil.Process()
    out = {"base": proc.memory_info().rss, "peak": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            out["peak"] = max(out["peak"], proc.memory_info().rss)
            done.wait(0.01)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        yield out
    finally:
        done.set()
        t.join()


def dpkg_bomb(count: int) -> bytes:
    """A dpkg status of `count` distinct packages: ~15 MiB, a 2.2 MB gzip layer at 140k."""
    status = "".join(
        f"Package: pkg-{i:06d}\nStatus: install ok installed\nVersion: 1.0-{i}\n"
        f"Architecture: amd64\nDescription: {hashlib.sha256(str(i).encode()).hexdigest()[:14]}"
        "\n\n" for i in range(count)).encode()
    return layer({"etc/os-release": os_release(), "var/lib/dpkg/status": status})


def npm_bomb(count: int) -> bytes:
    return layer({f"app/node_modules/p{i}/package.json": package_json(f"p{i}", "1.0.0")
                  for i in range(count)})


@pytest.mark.parametrize(("kind", "build", "limits", "where"), [
    # Default limits: 140k paragraphs stop at the 50k-record budget.
    ("dpkg", lambda: dpkg_bomb(140_000), Limits(), "/var/lib/dpkg/status"),
    # One record per file (a lower budget keeps the layer small to build).
    ("npm", lambda: npm_bomb(12_000), Limits(max_package_records=10_000), "/app/node_modules/"),
])
async def test_package_database_bomb_is_refused_fast_in_bounded_memory(
    registry, tmp_path: Path, kind: str, build, limits: Limits, where: str,
) -> None:
    blob = build()
    if kind == "dpkg":
        # The bomb: a ~2.2 MB layer (the scanner before this made a 13 MB report of it
        # in 18 s and 450 MB, past the 4 MiB message limit).
        assert 2.0e6 < len(blob) < 2.5e6
    img = ocikit.image(tmp_path, kind, [blob])
    del blob
    push(img, registry, f"team/{kind}")
    async for stub in serve(registry, tmp_path / "data", limits):
        start = time.monotonic()
        done = asyncio.Event()
        lag = asyncio.create_task(loop_lag(done))
        with peak_rss() as rss, pytest.raises(aio.AioRpcError) as exc:
            await stub.ScanImage(scan_pb2.ScanImageRequest(image=loc(f"team/{kind}", kind)),
                                 timeout=60)
        took = time.monotonic() - start
        done.set()
        # Parsing runs off the event loop: the server's other RPCs are not held up.
        assert await lag < 1.0
        assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        details = exc.value.details() or ""
        assert details.startswith(
            f"scan too big: more than {limits.max_package_records} package records"), details
        assert where in details
        info = _error_info(exc.value)
        assert info is not None and info.reason == "SCAN_TOO_BIG"
        assert took < 30, took
        assert rss["peak"] - rss["base"] < 200 << 20, (rss["peak"] - rss["base"]) >> 20
        # Nothing was cached: the refusal is the answer every time, never a partial report.
        with pytest.raises(aio.AioRpcError) as exc:
            await stub.GetScan(scan_pb2.GetScanRequest(digest=img.digest))
        assert exc.value.code() == grpc.StatusCode.NOT_FOUND


def osv_records(count: int) -> bytes:
    """One record per npm package p<i> 1.0.0, scores spread 0.5 .. 10, long summaries."""
    return json.dumps([{
        "id": f"TEST-{i:04d}", "modified": "2024-01-01T00:00:00Z",
        "summary": f"p{i} is vulnerable " + "x" * 150,
        "severity": [{"type": "CVSS_V3", "score": f"{0.5 + (i % 20) / 2:.1f}"}],
        "affected": [{"package": {"ecosystem": "npm", "name": f"p{i}"},
                      "ranges": [{"type": "SEMVER", "events": [{"introduced": "0"},
                                                               {"fixed": "2.0.0"}]}]}],
    } for i in range(count)]).encode()


async def test_a_report_over_the_limit_cuts_vulnerabilities_not_components(
    registry, tmp_path: Path
) -> None:
    img = ocikit.image(tmp_path, "many", [npm_bomb(200)])
    push(img, registry, "team/many")
    async for whole in serve(registry, tmp_path / "whole"):
        await whole.ImportVulnerabilities(scan_pb2.ImportVulnerabilitiesRequest(
            data=osv_records(200)))
        full = await whole.ScanImage(scan_pb2.ScanImageRequest(image=loc("team/many", "many")))
    assert len(full.vulnerabilities) == full.counts.all == 200 and not full.truncated
    components_only = scan_pb2.ScanReport()
    components_only.CopyFrom(full)
    del components_only.vulnerabilities[:]
    limit = (components_only.ByteSize() + full.ByteSize()) // 2

    async for stub in serve(registry, tmp_path / "cut", Limits(max_report_bytes=limit)):
        await stub.ImportVulnerabilities(scan_pb2.ImportVulnerabilitiesRequest(
            data=osv_records(200)))
        report = await stub.ScanImage(scan_pb2.ScanImageRequest(image=loc("team/many", "many")))
        assert report.truncated and report.ByteSize() <= limit
        assert 0 < len(report.vulnerabilities) < 200
        assert len(report.components) == 200 and not report.components_unknown
        assert report.counts == full.counts  # counts cover everything found
        kept = [v.score for v in report.vulnerabilities]
        dropped = sorted(v.score for v in full.vulnerabilities)[: 200 - len(kept)]
        assert min(kept) >= max(dropped)  # the most severe are the ones kept
        cached = await stub.GetScan(scan_pb2.GetScanRequest(digest=img.digest))
        assert cached.truncated and cached.ByteSize() <= limit
    # A report cached under a larger limit is cut when served under a smaller one.
    async for stub in serve(registry, tmp_path / "whole", Limits(max_report_bytes=limit)):
        cached = await stub.GetScan(scan_pb2.GetScanRequest(digest=img.digest))
        assert cached.truncated and cached.ByteSize() <= limit
        assert cached.counts == full.counts

    # Components are never cut: a report whose components alone do not fit is refused.
    small = components_only.ByteSize() - 100
    async for stub in serve(registry, tmp_path / "small", Limits(max_report_bytes=small)):
        with pytest.raises(aio.AioRpcError) as exc:
            await stub.ScanImage(scan_pb2.ScanImageRequest(image=loc("team/many", "many")))
        assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert (exc.value.details() or "").startswith(
            "scan too big: the report of 200 components is")


async def test_json_nested_too_deeply_is_refused_not_a_crash(
    stub: scan_pb2_grpc.ScanServiceStub, registry, tmp_path: Path
) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    img = ocikit.image(tmp_path, "deep", [layer({
        "app/node_modules/deep/package.json": deep,
        "app/node_modules/ok/package.json": package_json("ok", "1.0.0")})])
    push(img, registry, "team/deep")
    report = await stub.ScanImage(scan_pb2.ScanImageRequest(image=loc("team/deep", "deep")))
    assert [c.name for c in report.components] == ["ok"]

    with pytest.raises(aio.AioRpcError) as exc:
        await stub.ImportReport(scan_pb2.ImportReportRequest(digest=img.digest, report=deep))
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    res = await stub.ImportVulnerabilities(scan_pb2.ImportVulnerabilitiesRequest(data=deep))
    assert res.imported == 0 and res.skipped == 1 and "not JSON" in res.errors[0]
