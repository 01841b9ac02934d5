"""The split services as child processes on loopback ports, one process per replica, as
docker-compose and Kubernetes run them (tests/e2e/test_scale_out.py, bench/workers.py).

    with Cluster(tmp) as c:
        t1 = c.start("transfer-1", "transfer_service", "--database", url, "--worker-id", "t1")
        ...
        t1.kill()   # SIGKILL: a machine lost, nothing cleaned up

Each process gets a data folder of its own (one writer per --data) and logs to NAME.log.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from stack.ports import free_port
from stack.process import kill_process, stop_process

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class ServiceProcess:
    """One `python -m MODULE --grpc-listen 127.0.0.1:PORT --data DIR ARGS...` child."""

    name: str
    module: str
    args: list[str]
    workdir: Path
    port: int = field(default_factory=free_port)
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} is not running"
        return self.proc.pid

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def start(self, timeout: float = 60.0) -> ServiceProcess:
        """Start it and wait until its gRPC health service says SERVING."""
        data = self.workdir / self.name
        data.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", self.module, "--grpc-listen", self.address,
               "--data", str(data), *self.args]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=ROOT, env={**os.environ, **self.env}, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT,
            )
        self.wait_serving(timeout)
        return self

    def wait_serving(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.address) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while True:
                if self.proc is None or self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited:\n{self.log_tail()}")
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} not serving after {timeout}s:\n"
                                       f"{self.log_tail()}")
                time.sleep(0.05)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no cleanup at all (a crashed process, a lost machine)."""
        kill_process(self.proc)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        stop_process(self.proc, timeout)


class Cluster:
    """The processes started through it, stopped in reverse order on exit."""

    def __init__(self, workdir: Path, env: dict[str, str] | None = None) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.env = dict(env or {})
        self.processes: list[ServiceProcess] = []

    def add(self, name: str, module: str, *args: str, port: int = 0,
            env: dict[str, str] | None = None) -> ServiceProcess:
        """A process to start later (its port is known now: others may be told it first)."""
        proc = ServiceProcess(name, module, list(args), self.workdir,
                              env={**self.env, **(env or {})})
        if port:
            proc.port = port
        self.processes.append(proc)
        return proc

    def start(self, name: str, module: str, *args: str, port: int = 0,
              env: dict[str, str] | None = None, timeout: float = 60.0) -> ServiceProcess:
        return self.add(name, module, *args, port=port, env=env).start(timeout)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM to all (clients first), then wait for each; SIGKILL what lingers."""
        running = [p for p in reversed(self.processes) if p.running()]
        for p in running:
            assert p.proc is not None
            p.proc.send_signal(signal.SIGTERM)
        for p in running:
            p.stop(timeout)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
