"""The same system spread out like docker-compose.yml: each service its own process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mirror.v1 import gateway_pb2

from registry_testkit.images import ImageBuilder, push
from registry_testkit.ports import free_port
from tests.e2e.conftest import WEBHOOK_SECRET, Clients
from tests.e2e.helpers import skopeo_digest, tags_of
from tests.support.registry import RegistryFactory

pytestmark = pytest.mark.registry

ROOT = Path(__file__).resolve().parents[2]
Run = gateway_pb2.Run


def _wait_serving(address: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    with grpc.insecure_channel(address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{address} exited: {log.read_text()[-2000:]}")
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    return
            except grpc.RpcError:
                time.sleep(0.1)
    raise RuntimeError(f"{address} not serving: {log.read_text()[-2000:]}")


@pytest.fixture
def services(tmp_path: Path) -> Iterator[dict[str, str]]:
    ports = {n: free_port() for n in ("policy", "transfer", "scanner", "gateway", "http")}
    addr = {n: f"127.0.0.1:{p}" for n, p in ports.items()}
    tdata = tmp_path / "transfer"
    cmds = {
        "transfer": ["transfer_service", "--grpc-listen", addr["transfer"], "--data", str(tdata),
                     "--policy-address", addr["policy"]],
        "policy": ["policy_service", "--grpc-listen", addr["policy"],
                   "--data", str(tmp_path / "policy"), "--transfer-address", addr["transfer"]],
        "scanner": ["scanner", "--grpc-listen", addr["scanner"],
                    "--data", str(tmp_path / "scanner"), "--transfer-data", str(tdata)],
        "gateway": ["gateway", "--grpc-listen", addr["gateway"], "--http-listen", addr["http"],
                    "--data", str(tmp_path / "gateway"), "--policy-address", addr["policy"],
                    "--transfer-address", addr["transfer"], "--scanner-address", addr["scanner"],
                    "--transfer-data", str(tdata), "--reconcile-interval", "0"],
    }
    procs: list[subprocess.Popen[bytes]] = []
    env = {**os.environ, "MIRROR_WEBHOOK_SECRET": WEBHOOK_SECRET}
    try:
        for name in ("transfer", "policy", "scanner", "gateway"):  # compose's order
            log = tmp_path / f"{name}.log"
            p = subprocess.Popen(
                [sys.executable, "-m", *cmds[name]], cwd=ROOT, env=env,
                stdout=open(log, "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
            )
            procs.append(p)
            _wait_serving(addr[name], p, log)
        yield addr
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()


def test_event_mirrors_across_separate_processes(
    services: dict[str, str], registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    notify = {"name": "gw", "url": f"http://{services['http']}/events",
              "headers": {"Authorization": [f"Bearer {WEBHOOK_SECRET}"]}}
    dev = registry_factory(notifications=[notify])
    qa = registry_factory()
    # Each client talks to the service it needs, as compose's published ports allow.
    transfer = Clients(services["transfer"])
    policy = Clients(services["policy"])
    gateway = Clients(services["gateway"])
    try:
        transfer.add_endpoint("dev", dev)
        transfer.add_endpoint("qa", qa)
        # A label rule needs MANIFEST facts: the gateway reads them from the source registry
        # through the transfer service's endpoint store (read only).
        pol = policy.add_policy(
            "p", "dev/website", 'tag endswith "stable" and label["tier"] == "web"', "qa",
            "qa/website",
        )
        builder = ImageBuilder(tmp_path / "img")
        img = builder.image("8.0-stable", labels={"tier": "web"})
        push(img, dev, "dev/website")
        push(builder.image("8.1-stable", labels={"tier": "db"}), dev, "dev/website")
        runs = gateway.wait_runs_final(pol.id, 2)
        states = {r.source.reference: r.state for r in runs}
        assert states == {"8.0-stable": Run.STATE_SUCCEEDED, "8.1-stable": Run.STATE_NOT_MATCHED}
        assert tags_of(qa, "qa/website") == ["8.0-stable"]
        assert skopeo_digest(qa, "qa/website", "8.0-stable") == img.digest
    finally:
        for c in (transfer, policy, gateway):
            c.close()
