"""`make demo` (python -m stack.demo) runs the seed's scenario and stops what it started."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.registry

ROOT = Path(__file__).resolve().parents[2]


def test_demo_promotes_only_the_stable_tag_and_cleans_up(tmp_path: Path) -> None:
    # TMPDIR scopes the demo's work folder to this test, so leftovers can be looked for.
    env = {**os.environ, "TMPDIR": str(tmp_path), "COLUMNS": "200"}
    res = subprocess.run(
        [sys.executable, "-m", "stack.demo"], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=180,
    )
    out = res.stdout
    assert res.returncode == 0, out + res.stderr
    tags = re.findall(r"QA registry qa/website tags: \['(\d{8}-\d{6})'\]", out)
    assert len(tags) == 1, out  # only the stable tag arrived, named by the promotion time
    pair = re.findall(r"^  (\S+)\s+(sha256:[0-9a-f]{64})", out, re.M)
    assert [name for name, _ in pair] == ["dev/website:1.0-stable", f"qa/website:{tags[0]}"]
    assert pair[0][1] == pair[1][1] and "(identical)" in out
    assert re.search(r"1\.0-dev\s+│ NOT_MATCHED", out), out
    assert "Policy status: last=SUCCEEDED runs=2 succeeded=1 failed=0" in out
    assert "done: everything the demo started was stopped" in out
    assert list(tmp_path.iterdir()) == []  # its work folder is gone
    leftovers = [
        p.pid for p in psutil.process_iter(["cmdline"])
        if str(tmp_path) in " ".join(p.info["cmdline"] or [])
    ]
    assert leftovers == []
