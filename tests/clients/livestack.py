"""A real `mirror-stack` child with tokens and a webhook secret, plus a `mirrorctl` runner.

Every mirrorctl output is kept so tests can check that no secret ever appears in one.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stack.process import StackProcess

ROOT = Path(__file__).resolve().parents[2]
MIRRORCTL = str(ROOT / ".venv/bin/mirrorctl")
ADMIN_TOKEN = "admin-tok-" + "4f1c9a7e2b6d8035"
READ_TOKEN = "read-tok-" + "9e27c4b1d5a36f80"
WEBHOOK_SECRET = "whsec-" + "71d0c3a95e8b24f6"


@dataclass
class Run:
    args: list[str]
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


@dataclass
class LiveStack:
    process: StackProcess
    outputs: list[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        return self.process.grpc_address

    @property
    def log(self) -> str:
        return self.process.log_path.read_text(errors="replace")

    def ctl(
        self, *args: str, token: str | None = ADMIN_TOKEN, stdin: str | None = None,
        env: dict[str, str] | None = None, timeout: float = 120,
    ) -> Run:
        """Run mirrorctl as a user would; the address and token come from the environment."""
        child = {k: v for k, v in os.environ.items() if not k.startswith("MIRROR_")}
        child["MIRROR_ADDRESS"] = self.address
        if token is not None:
            child["MIRROR_TOKEN"] = token
        child.update(env or {})
        res = subprocess.run(
            [MIRRORCTL, *args], input=stdin, capture_output=True, text=True, env=child,
            timeout=timeout, cwd=str(ROOT),
        )
        self.outputs += [res.stdout, res.stderr]
        return Run(list(args), res.returncode, res.stdout, res.stderr)


def notification(stack: StackProcess) -> dict[str, Any]:
    """A docker-registry notification endpoint pointing at the stack's webhook."""
    return {
        "name": "mirror",
        "url": stack.webhook_url,
        "headers": {"Authorization": [f"Bearer {WEBHOOK_SECRET}"]},
        "timeout": "2s",
        "backoff": "200ms",
    }


def start_stack(tmp: Path, extra_args: list[str] | None = None) -> StackProcess:
    return StackProcess(
        tmp / "stack-data",
        webhook_secret=WEBHOOK_SECRET,
        env={"MIRROR_ADMIN_TOKEN": ADMIN_TOKEN, "MIRROR_READ_TOKEN": READ_TOKEN},
        extra_args=["--reconcile-interval", "0", *(extra_args or [])],
    )


def running(proc: StackProcess) -> Iterator[LiveStack]:
    proc.start(timeout=60)
    try:
        yield LiveStack(proc)
    finally:
        proc.stop()


def wait_for(what: str, probe: Callable[[], Any], timeout: float = 60.0) -> Any:
    """Poll `probe` until it returns something truthy; AssertionError naming `what`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")
