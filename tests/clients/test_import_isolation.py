"""The SDK and the CLI import without any server dependency installed."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Server-side packages and their dependencies: none may be needed by mirror.client / mirror.cli.
BLOCKED = [
    "aiohttp", "aiofiles", "lark", "re2", "cryptography", "univers", "cvss", "packageurl",
    "license_expression", "prometheus_client", "zstandard", "bcrypt", "jwt", "trustme",
    "servicekit", "policy_service", "transfer_service", "gateway", "scanner", "registry_client",
    "registry_testkit", "stack", "grpc_reflection",
    # A dev tool that grpc imports when present (and does without).
    "grpc_tools",
]
# What the SDK and CLI may import from outside the standard library.
ALLOWED_TOP = {
    "mirror", "grpc", "google", "grpc_status", "grpc_health", "rich", "yaml", "markdown_it",
    "mdurl", "pygments", "typing_extensions", "_yaml",
    "cython_runtime",  # made by grpc's compiled core
}

SCRIPT = textwrap.dedent(
    """
    import importlib.abc, sys
    blocked = set(sys.argv[1].split(","))

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in blocked:
                raise ImportError(f"blocked import of {name}")
            return None

    sys.meta_path.insert(0, Block())
    before = set(sys.modules)
    import mirror.client, mirror.aio, mirror.errors, mirror.cli.main
    parser = mirror.cli.main.build_parser()
    assert parser.prog == "mirrorctl"
    new = {m.split(".")[0] for m in set(sys.modules) - before}
    stdlib = set(sys.stdlib_module_names)
    print(",".join(sorted(n for n in new if n not in stdlib and not n.startswith("_"))))
    """
)


def test_sdk_and_cli_import_without_server_dependencies() -> None:
    res = subprocess.run(
        [sys.executable, "-c", SCRIPT, ",".join(BLOCKED)],
        capture_output=True, text=True, cwd=str(ROOT / "clients"), timeout=60,
    )
    assert res.returncode == 0, res.stderr
    imported = set(filter(None, res.stdout.strip().split(",")))
    assert "mirror" in imported
    assert imported <= ALLOWED_TOP, f"unexpected imports: {imported - ALLOWED_TOP}"


def test_the_blocker_really_blocks() -> None:
    # The same harness refuses a blocked module, so the test above cannot pass by accident.
    res = subprocess.run(
        [
            sys.executable, "-c",
            SCRIPT.replace("import mirror.client", "import aiohttp, mirror.client"),
            ",".join(BLOCKED),
        ],
        capture_output=True, text=True, cwd=str(ROOT / "clients"), timeout=60,
    )
    assert res.returncode != 0
    assert "blocked import of aiohttp" in res.stderr
