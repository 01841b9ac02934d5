"""Project-wide pytest setup: shared fixtures from tests/support."""

from __future__ import annotations

import sys
from pathlib import Path

# registry_testkit lives at the repository root (shared with bench/ and the demo).
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

pytest_plugins = [
    "tests.support.registry",
    "tests.support.images",
    "tests.support.faultproxy",
    "tests.support.postgres",
    "tests.support.volumes",
]
