"""The scanner reads registries only through the transfer service's API (docs/INTERFACES.md
"Endpoint access for the scanner and gateway"): the transfer service holds the endpoint's
credentials and CA, the scanner holds no key and opens no other service's files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from mirror.v1 import common_pb2, scan_pb2, scan_pb2_grpc, transfer_pb2, transfer_pb2_grpc

from registry_testkit.images import push
from tests.scanner import ocikit
from tests.scanner.layerkit import ALPINE_INSTALLED, ALPINE_OS_RELEASE, layer
from tests.scanner.processes import ROOT, start

pytestmark = pytest.mark.registry

ADMIN = "admin-token-for-the-scanner-test-0123"


def test_scan_through_the_transfer_service_with_basic_auth(
    tls_registry, tmp_path: Path
) -> None:
    from tests.support.registry import HTPASSWD_USERS

    user, password = next(iter(HTPASSWD_USERS.items()))
    img = ocikit.image(tmp_path, "3.19", [layer({
        "etc/os-release": ALPINE_OS_RELEASE, "lib/apk/db/installed": ALPINE_INSTALLED})])
    push(img, tls_registry, "base/alpine", user=user, password=password)

    env = {"MIRROR_ADMIN_TOKEN": ADMIN}
    auth = [("authorization", f"Bearer {ADMIN}")]
    transfer = start("transfer_service", tmp_path / "logs", "--data", str(tmp_path / "transfer"),
                     env=env)
    scanner = None
    try:
        with grpc.insecure_channel(transfer.address) as ch:
            transfer_pb2_grpc.TransferServiceStub(ch).CreateEndpoint(
                transfer_pb2.CreateEndpointRequest(endpoint=transfer_pb2.Endpoint(
                    name="prod", url=tls_registry.url, username=user, secret=password,
                    ca_pem=tls_registry.ca_pem)), metadata=auth, timeout=10)
        scanner = start("scanner", tmp_path / "logs", "--data", str(tmp_path / "scan"),
                        "--transfer-address", transfer.address, env=env)
        with grpc.insecure_channel(scanner.address) as ch:
            report = scan_pb2_grpc.ScanServiceStub(ch).ScanImage(
                scan_pb2.ScanImageRequest(image=common_pb2.ImageLocation(
                    endpoint="prod", repository="base/alpine", reference="3.19")),
                metadata=auth, timeout=60)
    finally:
        if scanner is not None:
            scanner.stop()
        transfer.stop()
    assert report.os.id == "alpine" and report.digest == img.digest
    assert {c.name for c in report.components} == {
        "musl", "busybox", "libcrypto3", "zlib", "ca-certificates-bundle"}
    assert password not in str(report)
    # The scanner's folder holds its own database only: no key, no endpoint store.
    assert sorted(p.name for p in (tmp_path / "scan").iterdir() if p.suffix in (".db", ".key")
                  ) == ["scanner.db"]


@pytest.mark.parametrize("flag", ["--transfer-data", "--secret-key-file"])
def test_the_old_flags_that_opened_the_transfer_services_files_are_gone(
    flag: str, tmp_path: Path
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "scanner", "--data", str(tmp_path), flag, str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2 and f"unrecognized arguments: {flag}" in done.stderr
