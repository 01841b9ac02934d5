"""`python -m scanner` starts a gRPC server that answers ScanService calls."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from mirror.v1 import scan_pb2, scan_pb2_grpc

from registry_testkit.ports import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_python_m_scanner_serves_and_stops(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'clients'}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "scanner", "--grpc-listen", f"127.0.0.1:{port}",
         "--data", str(tmp_path / "data")], cwd=ROOT, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            grpc.channel_ready_future(ch).result(timeout=30)
            stub = scan_pb2_grpc.ScanServiceStub(ch)
            with pytest.raises(grpc.RpcError) as exc:
                stub.GetScan(scan_pb2.GetScanRequest(digest="sha256:" + "0" * 64), timeout=10)
            assert exc.value.code() == grpc.StatusCode.NOT_FOUND
            res = stub.ImportVulnerabilities(scan_pb2.ImportVulnerabilitiesRequest(
                path=str(ROOT / "tests/scanner/osv")), timeout=30)
            assert res.imported > 0 and res.database_version != "empty"
            status = stub.GetVulnerabilityDatabaseStatus(
                scan_pb2.GetVulnerabilityDatabaseStatusRequest(), timeout=10)
            assert status.loaded and status.records == res.imported
            assert status.database_version == res.database_version
        assert (tmp_path / "data" / "scanner.db").is_file()
    finally:
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, proc.stderr.read().decode() if proc.stderr else ""
