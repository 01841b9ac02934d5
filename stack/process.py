"""Run `mirror-stack` as a child process (used by the demo, the end-to-end tests and bench/)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stack.ports import free_port

READY_LINE = "mirror-stack ready"


def kill_process(proc: subprocess.Popen[Any] | None) -> None:
    """SIGKILL a child (no cleanup at all: a crash, a lost machine) and reap it."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)


def stop_process(proc: subprocess.Popen[Any] | None, timeout: float) -> None:
    """SIGTERM a child, then SIGKILL if it does not exit within `timeout` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


class StackProcess:
    """One `python -m stack` child on fixed loopback ports; restartable on the same data."""

    def __init__(
        self,
        data_dir: Path,
        *,
        grpc_port: int = 0,
        http_port: int = 0,
        webhook_secret: str = "",
        extra_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.grpc_port = grpc_port or free_port()
        self.http_port = http_port or free_port()
        self.webhook_secret = webhook_secret
        self.extra_args = list(extra_args)
        self.env = dict(env or {})
        self.log_path = log_path or self.data_dir.parent / f"{self.data_dir.name}-stack.log"
        self.proc: subprocess.Popen[str] | None = None
        self._lines: list[str] = []

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def webhook_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/events"

    @property
    def http_base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def registry_notification(self, name: str, **settings: Any) -> dict[str, Any]:
        """A docker-registry `notifications` endpoint posting to this stack's webhook (with
        its secret); `settings` adds endpoint options such as timeout, threshold, backoff."""
        secret = self.webhook_secret
        headers = {"Authorization": [f"Bearer {secret}"]} if secret else {}
        return {"name": name, "url": self.webhook_url, "headers": headers, **settings}

    def start(self, timeout: float = 30.0, env: dict[str, str] | None = None) -> None:
        """Start and wait for the ready line; `env` adds variables for this start only."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        child_env = {**os.environ, **self.env, **(env or {})}
        if self.webhook_secret:
            child_env["MIRROR_WEBHOOK_SECRET"] = self.webhook_secret
        cmd = [
            sys.executable,
            "-m",
            "stack",
            "--data",
            str(self.data_dir),
            "--grpc-listen",
            self.grpc_address,
            "--http-listen",
            f"127.0.0.1:{self.http_port}",
            *self.extra_args,
        ]
        log = open(self.log_path, "a")  # noqa: SIM115 - closed by the reader thread
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
            text=True,
            env=child_env,
            cwd=str(Path(__file__).resolve().parent.parent),
        )
        ready = threading.Event()
        proc = self.proc

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                self._lines.append(line)
                log.write(line)
                log.flush()
                if READY_LINE in line:
                    ready.set()
            log.close()

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not ready.wait(0.05):
            if proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = self.log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"mirror-stack did not start:\n{tail}")

    @property
    def output(self) -> str:
        return "".join(self._lines)

    def kill(self) -> None:
        """SIGKILL: no cleanup at all (crash simulation)."""
        kill_process(self.proc)
        self.proc = None

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        stop_process(self.proc, timeout)
        self.proc = None

    def __enter__(self) -> StackProcess:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
