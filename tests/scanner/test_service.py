"""ScanService over gRPC against a real docker-registry with images pushed by skopeo."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc import aio
from grpc_status import rpc_status
from mirror.v1 import common_pb2, scan_pb2, scan_pb2_grpc

from registry_client import RegistryClient, RegistryConfig
from registry_testkit.images import push
from scanner.layers import Limits
from scanner.servicer import ScanServicer
from servicekit import errors
from servicekit.server import start_server
from tests.scanner import ocikit
from tests.scanner.layerkit import (
    Link,
    dist_info,
    dpkg_query,
    layer,
    machine_dpkg,
    os_release,
    package_json,
    whiteout,
)

pytestmark = pytest.mark.registry
OSV = Path(__file__).parent / "osv"


@dataclass
class Resolver:
    """Endpoint name -> client, as transfer_service's EndpointStore.client_for does."""

    urls: dict[str, str]

    def client_for(self, name: str) -> RegistryClient:
        if name not in self.urls:
            raise errors.not_found(f"no endpoint {name!r}", reason="ENDPOINT_NOT_FOUND")
        return RegistryClient(RegistryConfig(url=self.urls[name]))


@pytest.fixture
async def stub(registry, tmp_path: Path) -> AsyncIterator[scan_pb2_grpc.ScanServiceStub]:
    servicer = ScanServicer(tmp_path / "data", Resolver({"dev": registry.url}),
                            limits=Limits(max_image_bytes=32 << 20))
    running = await start_server([servicer], "127.0.0.1:0")
    async with aio.insecure_channel(f"127.0.0.1:{running.port}") as ch:
        yield scan_pb2_grpc.ScanServiceStub(ch)
    await running.stop(0)


def loc(repo: str, ref: str) -> common_pb2.ImageLocation:
    return common_pb2.ImageLocation(endpoint="dev", repository=repo, reference=ref)


def app_layers() -> tuple[list[str], str, list[bytes]]:
    names, paras, copyrights = machine_dpkg(20)
    removed = names[5]
    site = "usr/lib/python3/dist-packages"
    py = {}
    for project in ("requests", "cvss", "lark"):
        try:
            folder, meta = dist_info(project)
        except LookupError:
            continue
        py[f"{site}/{folder}/METADATA"] = meta
    base: dict[str, bytes | Link | None] = {
        "usr/lib/os-release": os_release(), "etc/os-release": Link("../usr/lib/os-release"),
        "var/lib/dpkg/status": "\n".join(paras[n] for n in names).encode(),
        **{f"usr/share/doc/{n}/copyright": copyrights[n] for n in names},
    }
    app: dict[str, bytes | Link | None] = {
        **py,
        "srv/node_modules/lodash/package.json": package_json("lodash", "4.17.20", license="MIT"),
        "srv/node_modules/minimist/package.json": package_json("minimist", "1.2.5",
                                                               license="MIT"),
    }
    remove = {
        "var/lib/dpkg/status": "\n".join(paras[n] for n in names if n != removed).encode(),
        whiteout(f"usr/share/doc/{removed}"): b"",
    }
    return names, removed, [layer(base), layer(app, "zstd"), layer(remove, "none")]


async def test_scan_image_components_cache_and_vulnerability_refresh(
    stub: scan_pb2_grpc.ScanServiceStub, registry, tmp_path: Path
) -> None:
    names, removed, layers = app_layers()
    ref = ocikit.image(tmp_path, "1.0", layers, labels={"team": "web"})
    push(ref, registry, "team/app")

    report = await stub.ScanImage(scan_pb2.ScanImageRequest(image=loc("team/app", "1.0")))
    assert report.digest == ref.digest
    debs = {(c.name, c.version) for c in report.components if c.type == "deb"}
    assert debs == dpkg_query([n for n in names if n != removed])
    assert ("lodash", "4.17.20") in {(c.name, c.version) for c in report.components}
    assert {c.type for c in report.components} >= {"deb", "pypi", "npm"}
    assert all(c.licenses for c in report.components if c.type == "deb")
    assert report.os.id == "debian"
    assert list(report.platforms) == ["linux/amd64"]
    assert report.labels["team"] == "web"
    assert report.size_bytes > 0 and list(report.sources) == ["layers"]
    assert report.counts.all == 0 and report.database_version == "empty"

    imported = await stub.ImportVulnerabilities(
        scan_pb2.ImportVulnerabilitiesRequest(path=str(OSV)))
    assert imported.imported == len(list(OSV.glob("*.json"))) and not imported.errors

    again = await stub.GetScan(scan_pb2.GetScanRequest(digest=ref.digest))
    assert again.database_version == imported.database_version
    # lodash 4.17.20 (GHSA-35jh 7.2) and minimist 1.2.5 (GHSA-xvch 9.8); machine debs are newer
    # than the Debian fixtures' fixed versions.
    assert {v.id for v in again.vulnerabilities} == {"GHSA-35jh-r3h4-6jhm", "GHSA-xvch-5gv4-984h"}
    assert (again.counts.critical, again.counts.major, again.counts.minor, again.counts.all) == (
        2, 0, 0, 2)
    assert all(v.bucket == scan_pb2.Vulnerability.BUCKET_CRITICAL for v in again.vulnerabilities)

    cached = await stub.ScanImage(scan_pb2.ScanImageRequest(image=loc("team/app", ref.digest)))
    assert cached.scan_time == again.scan_time
    forced = await stub.ScanImage(scan_pb2.ScanImageRequest(image=loc("team/app", "1.0"),
                                                            force=True))
    assert forced.scan_time.ToDatetime() >= again.scan_time.ToDatetime()
    assert forced.counts == again.counts


async def test_index_is_the_union_of_its_platforms(
    stub: scan_pb2_grpc.ScanServiceStub, registry, tmp_path: Path
) -> None:
    amd = layer({"app/node_modules/a/package.json": package_json("a", "1.0.0", license="MIT")})
    arm = layer({"app/node_modules/b/package.json": package_json("b", "2.0.0", license="ISC")})
    ref = ocikit.index(tmp_path, "multi", {"linux/amd64": [amd], "linux/arm64/v8": [arm]})
    push(ref, registry, "team/multi")
    report = await stub.ScanImage(scan_pb2.ScanImageRequest(image=loc("team/multi", "multi")))
    assert report.digest == ref.digest
    assert sorted(report.platforms) == ["linux/amd64", "linux/arm64/v8"]
    assert {(c.name, tuple(c.licenses)) for c in report.components} == {
        ("a", ("MIT",)), ("b", ("ISC",))}


async def test_hostile_layers_are_refused_and_service_keeps_serving(
    stub: scan_pb2_grpc.ScanServiceStub, registry, tmp_path: Path
) -> None:
    evil = ocikit.image(tmp_path, "evil", [layer({"../../etc/cron.d/x": b"boom"})])
    push(evil, registry, "team/evil")
    with pytest.raises(aio.AioRpcError) as exc:
        await stub.ScanImage(scan_pb2.ScanImageRequest(image=loc("team/evil", "evil")))
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "PATH_ESCAPE" in exc.value.details() and "../../etc/cron.d/x" in exc.value.details()
    info = _error_info(exc.value)
    assert info is not None and info.reason == "PATH_ESCAPE"

    from tests.scanner.test_layers import _zero_member_gzip
    bomb = ocikit.image(tmp_path, "bomb", [_zero_member_gzip("zeros.bin", 64 << 20)])
    push(bomb, registry, "team/bomb")
    with pytest.raises(aio.AioRpcError) as exc:
        await stub.ScanImage(scan_pb2.ScanImageRequest(image=loc("team/bomb", "bomb")))
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "IMAGE_TOO_LARGE" in exc.value.details()

    with pytest.raises(aio.AioRpcError) as exc:
        await stub.GetScan(scan_pb2.GetScanRequest(digest=evil.digest))
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND

    good = ocikit.image(tmp_path, "good", [layer({"etc/os-release": b"ID=alpine\n"})])
    push(good, registry, "team/good")
    report = await stub.ScanImage(scan_pb2.ScanImageRequest(image=loc("team/good", "good")))
    assert report.os.id == "alpine"


async def test_attached_attestation_sbom_adds_components(
    stub: scan_pb2_grpc.ScanServiceStub, registry, tmp_path: Path
) -> None:
    img = ocikit.image(tmp_path, "v1", [layer({"etc/os-release": b"ID=debian\nVERSION_ID=12\n"})])
    push(img, registry, "team/sbom")
    bom = {"bomFormat": "CycloneDX", "specVersion": "1.5", "components": [
        {"type": "library", "name": "requests", "version": "2.30.0",
         "purl": "pkg:pypi/requests@2.30.0", "licenses": [{"license": {"id": "Apache-2.0"}}]}]}
    att = ocikit.attestation(tmp_path, img.digest, "https://cyclonedx.org/bom", bom)
    push(att, registry, "team/sbom")
    await stub.ImportVulnerabilities(scan_pb2.ImportVulnerabilitiesRequest(
        data=(OSV / "GHSA-j8r2-6x86-q33q.json").read_bytes()))
    report = await stub.ScanImage(scan_pb2.ScanImageRequest(image=loc("team/sbom", "v1")))
    assert f"referrer:{att.digest}" in report.sources
    comps = {(c.name, c.version, c.type, tuple(c.licenses)) for c in report.components}
    assert ("requests", "2.30.0", "pypi", ("Apache-2.0",)) in comps
    assert [v.id for v in report.vulnerabilities] == ["GHSA-j8r2-6x86-q33q"]
    assert report.counts.major == 1


async def test_errors_have_the_right_codes(stub: scan_pb2_grpc.ScanServiceStub) -> None:
    cases = [
        (scan_pb2.ScanImageRequest(image=loc("team/none", "1.0")), grpc.StatusCode.NOT_FOUND),
        (scan_pb2.ScanImageRequest(image=common_pb2.ImageLocation(
            endpoint="nope", repository="a", reference="b")), grpc.StatusCode.NOT_FOUND),
        (scan_pb2.ScanImageRequest(), grpc.StatusCode.INVALID_ARGUMENT),
    ]
    for req, code in cases:
        with pytest.raises(aio.AioRpcError) as exc:
            await stub.ScanImage(req)
        assert exc.value.code() == code, req
    with pytest.raises(aio.AioRpcError) as exc:
        await stub.GetScan(scan_pb2.GetScanRequest(digest="latest"))
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(aio.AioRpcError) as exc:
        await stub.ImportReport(scan_pb2.ImportReportRequest(
            digest="sha256:" + "a" * 64, report=b"{}"))
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(aio.AioRpcError) as exc:
        await stub.ImportVulnerabilities(scan_pb2.ImportVulnerabilitiesRequest(path="/nonexistent"))
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    bad = await stub.ImportVulnerabilities(scan_pb2.ImportVulnerabilitiesRequest(
        data=json.dumps([{"id": "X-1"}]).encode()))
    assert bad.imported == 0 and bad.skipped == 1 and "modified" in bad.errors[0]


def _error_info(err: aio.AioRpcError) -> error_details_pb2.ErrorInfo | None:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    if status is None:
        return None
    for d in status.details:
        info = error_details_pb2.ErrorInfo()
        if d.Unpack(info):
            return info
    return None
