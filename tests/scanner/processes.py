"""Services as the deployment runs them (`python -m <service>` processes) for scanner tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc

from registry_testkit.ports import free_port

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Service:
    proc: subprocess.Popen[bytes]
    address: str
    log: Path

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Stop it (SIGTERM: gracefully); its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start(module: str, log_dir: Path, *args: str, env: dict[str, str] | None = None) -> Service:
    """`python -m module --grpc-listen 127.0.0.1:<free port> *args`, once it serves gRPC."""
    address = f"127.0.0.1:{free_port()}"
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{module}-{address.rsplit(':', 1)[1]}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", module, "--grpc-listen", address, *args],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'clients'}", **(env or {})},
        stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )
    service = Service(proc, address, log)
    with grpc.insecure_channel(address) as ch:
        try:
            grpc.channel_ready_future(ch).result(timeout=30)
        except grpc.FutureTimeoutError:
            service.stop(signal.SIGKILL)
            raise RuntimeError(f"{module} did not serve: {service.output()[-2000:]}") from None
    return service
