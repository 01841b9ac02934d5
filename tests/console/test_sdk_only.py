"""The console talks to the services only through the SDK (`mirror`): importing it loads no
service's code, so a console of its own needs nothing of the servers (a split deployment)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.console.conftest import ROOT

# The services and their internals; servicekit and stack too: the console's HTTP plumbing is
# aiohttp's own, and the stack mounts the console, not the other way round.
SERVER_PACKAGES = ("policy_service", "transfer_service", "gateway", "scanner",
                   "registry_client", "servicekit", "stack")

# Imports every module of the console package (pages, views, the standalone entry point)
# in a fresh interpreter, then names the server packages that came with them.
PROBE = f"""
import importlib, json, pkgutil, sys
import console
import console.app
for mod in pkgutil.walk_packages(console.__path__, "console."):
    importlib.import_module(mod.name)
server = {SERVER_PACKAGES!r}
print(json.dumps({{
    "console": sorted(m for m in sys.modules if m.split(".")[0] == "console"),
    "server": sorted(m for m in sys.modules if m.split(".")[0] in server),
}}))
"""


def test_importing_the_console_loads_no_service_code() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=True)
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    # The probe did import the console, views and entry point included.
    assert {"console.app", "console.__main__", "console.views.mirrors"} <= set(loaded["console"])
    assert loaded["server"] == []
