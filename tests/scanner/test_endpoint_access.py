"""The scanner pulls with credentials from the transfer service's endpoint store (read-only),
as docs/INTERFACES.md "Endpoint access for the scanner and gateway" describes."""

from __future__ import annotations

from pathlib import Path

import pytest
from grpc import aio
from mirror.v1 import common_pb2, scan_pb2, scan_pb2_grpc

from registry_testkit.images import push
from scanner.servicer import ScanServicer
from servicekit.server import start_server
from tests.scanner import ocikit
from tests.scanner.layerkit import ALPINE_INSTALLED, ALPINE_OS_RELEASE, layer
from transfer_service.endpoints import EndpointRecord, EndpointStore
from transfer_service.schema import open_database
from transfer_service.secrets import load_secret_box

pytestmark = pytest.mark.registry


async def test_scan_through_readonly_endpoint_store_with_basic_auth(
    tls_registry, tmp_path: Path
) -> None:
    from tests.support.registry import HTPASSWD_USERS

    user, password = next(iter(HTPASSWD_USERS.items()))
    transfer_data = tmp_path / "transfer"
    key_file = transfer_data / "secret.key"
    transfer_data.mkdir()
    box = load_secret_box(key_file, env={})
    writer = EndpointStore(open_database(transfer_data), box)
    writer.create(EndpointRecord(name="prod", url=tls_registry.url, username=user,
                                 secret=password, ca_pem=tls_registry.ca_pem))

    img = ocikit.image(tmp_path, "3.19", [layer({
        "etc/os-release": ALPINE_OS_RELEASE, "lib/apk/db/installed": ALPINE_INSTALLED})])
    push(img, tls_registry, "base/alpine", user=user, password=password)

    reader = EndpointStore.open_readonly(transfer_data, load_secret_box(key_file, env={}))
    running = await start_server([ScanServicer(tmp_path / "scan", reader)], "127.0.0.1:0")
    try:
        async with aio.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            stub = scan_pb2_grpc.ScanServiceStub(ch)
            report = await stub.ScanImage(scan_pb2.ScanImageRequest(image=common_pb2.ImageLocation(
                endpoint="prod", repository="base/alpine", reference="3.19")))
    finally:
        await running.stop(0)
    assert report.os.id == "alpine"
    assert {c.name for c in report.components} == {
        "musl", "busybox", "libcrypto3", "zlib", "ca-certificates-bundle"}
    assert password not in str(report)
