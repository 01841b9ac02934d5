"""`mirror-stack` and `python -m gateway` refuse an exposed webhook listener without a secret."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "cmd",
    [
        ["stack", "--grpc-listen", "127.0.0.1:0"],
        ["gateway", "--grpc-listen", "127.0.0.1:0", "--policy-address", "127.0.0.1:1",
         "--transfer-address", "127.0.0.1:1"],
    ],
)
def test_non_loopback_http_without_secret_refuses_to_start(cmd: list[str], tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MIRROR_WEBHOOK_SECRET"}
    res = subprocess.run(
        [sys.executable, "-m", *cmd, "--data", str(tmp_path), "--http-listen", "0.0.0.0:0"],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env=env,
    )
    assert res.returncode != 0
    assert "not loopback" in res.stderr and "secret" in res.stderr
