"""One writer per data directory (issue 11, item 6): a second process on the same --data is
refused with a message naming the one that holds it; a killed holder leaves no stale lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from stack.process import StackProcess

ROOT = Path(__file__).resolve().parents[2]


def second(module: str, data: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, "--data", str(data), "--grpc-listen", "127.0.0.1:0",
         *(["--http-listen", "127.0.0.1:0"] if module == "stack" else [])],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )


def test_second_process_on_the_same_data_is_refused_naming_the_holder(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = StackProcess(data, extra_args=["--reconcile-interval", "0"])
    first.start()
    try:
        for module in ("stack", "policy_service"):
            res = second(module, data)
            assert res.returncode == 1, res.stderr
            last = res.stderr.strip().splitlines()[-1]
            assert "is in use by mirror-stack (pid" in last, last
            assert str(data.resolve()) in last and "--data" in last
            assert "Traceback" not in res.stderr
        # The holder is untouched and still serves.
        assert first.proc is not None and first.proc.poll() is None
    finally:
        first.stop()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = StackProcess(data, extra_args=["--reconcile-interval", "0"])
    first.start()
    assert first.proc is not None
    os.kill(first.proc.pid, signal.SIGKILL)
    first.proc.wait(timeout=30)
    again = StackProcess(data, extra_args=["--reconcile-interval", "0"])
    again.start()
    again.stop()
