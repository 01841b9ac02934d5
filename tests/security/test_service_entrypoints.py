"""`python -m policy_service` / `transfer_service` take the security options and enforce them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from mirror import errors
from mirror.client import Client, connect

ROOT = Path(__file__).resolve().parents[2]
ADMIN = "entrypoint-admin-token-123456"


@pytest.fixture(params=["policy_service", "transfer_service"])
def service(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"admin:{ADMIN}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIRROR_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", request.param, "--grpc-listen", "127.0.0.1:0", "--data",
         str(tmp_path / "data"), "--tokens-file", str(tokens)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(ROOT), env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        port = re.search(r"(\d+)\s*$", line.strip())
        assert port, f"no port in {line!r}: {proc.stderr.read() if proc.poll() else ''}"
        yield request.param, f"127.0.0.1:{port.group(1)}"
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def _list(c: Client, module: str) -> object:
    return c.policies.list() if module == "policy_service" else c.transfers.list_endpoints()


def test_entrypoint_requires_a_token(service: tuple[str, str]) -> None:
    module, address = service
    with connect(address, timeout=10) as c, pytest.raises(errors.Unauthenticated):
        _list(c, module)
    with connect(address, token="wrong-token-of-enough-length", timeout=10) as c, \
            pytest.raises(errors.Unauthenticated):
        _list(c, module)
    with connect(address, token=ADMIN, timeout=10) as c:
        assert _list(c, module) is not None
