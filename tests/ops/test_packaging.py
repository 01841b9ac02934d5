"""The SDK installs without the servers' dependencies; the container image follows the points
of issue 15 (no Dockerfile linter is packaged for Debian 12, so the Dockerfile is parsed)."""

from __future__ import annotations

import ast
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]


def imported_top_names(folder: Path) -> set[str]:
    names: set[str] = set()
    for path in folder.rglob("*.py"):
        if "v1" in path.relative_to(folder).parts[:1]:
            continue  # generated code: protobuf and grpc only
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return names


def test_the_sdk_needs_only_the_base_dependencies() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = {Requirement(r).name.lower() for r in project["dependencies"]}
    server = {Requirement(r).name.lower() for r in project["optional-dependencies"]["server"]}
    assert base and server and not base & server
    dists = metadata.packages_distributions()
    needed: set[str] = set()
    for name in imported_top_names(ROOT / "clients" / "mirror") - {"mirror", "__future__"}:
        if name in sys.stdlib_module_names:
            continue
        found = {d.lower() for d in dists.get(name, [])}
        assert found, f"mirror imports {name}, which no installed distribution provides"
        needed |= found
    # google.* is shared by protobuf and googleapis-common-protos: both are base dependencies.
    assert needed <= base, f"the SDK imports {sorted(needed - base)} beyond the base dependencies"
    # Unused pins are gone (aiofiles was pinned and imported nowhere).
    assert "aiofiles" not in base | server


def dockerfile() -> list[str]:
    """Instructions of the Dockerfile, continuation lines joined, comments dropped."""
    out: list[str] = []
    pending = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            out.append(pending.strip())
            pending = ""
    return out


def test_the_container_image_follows_the_operating_rules() -> None:
    steps = dockerfile()
    kinds = [s.split()[0].upper() for s in steps]
    assert kinds[0] == "FROM"
    # Dependencies in a layer of their own, before any code is copied.
    dep_install = next(i for i, s in enumerate(steps) if "pip install -r" in s)
    first_code = next(i for i, s in enumerate(steps) if s.startswith("COPY") and "clients" in s)
    assert dep_install < first_code
    copies_before = [s for s in steps[:dep_install] if s.startswith("COPY")]
    assert all("pyproject.toml" in s or "README.md" in s for s in copies_before)
    # A non-root user runs the services.
    users = [s.split()[1] for s in steps if s.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    # The health check asks the gRPC health service.
    (health,) = [s for s in steps if s.startswith("HEALTHCHECK")]
    assert "servicekit.healthcheck" in health
    # The default command does not serve an unauthenticated API on every interface.
    (cmd,) = [s for s in steps if s.startswith("CMD")]
    assert "0.0.0.0" not in cmd or "--tokens-file" in cmd
    ignore = (ROOT / ".dockerignore").read_text().split()
    for entry in (".git", ".venv", "tests", "**/__pycache__"):
        assert entry in ignore
