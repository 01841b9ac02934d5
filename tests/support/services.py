"""The services as processes of their own, as docker-compose.yml runs them, for the tests of
split deployments: the command lines each test needs, started in order, each waited for until
its gRPC health service says SERVING, all stopped afterwards."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]


def split_commands(
    data: Path, addr: Mapping[str, str], *, scanner: Sequence[str] = (), dial: Sequence[str] = ()
) -> dict[str, list[str]]:
    """`python -m` arguments of transfer, policy, scanner and gateway (and the router when
    `addr` names one) dialing each other at `addr`, each with its data folder under `data`;
    `dial`: the client options (TLS) of those that dial others."""
    cmds = {
        "transfer": ["transfer_service", "--grpc-listen", addr["transfer"],
                     "--data", str(data / "transfer"), "--policy-address", addr["policy"],
                     *dial],
        "policy": ["policy_service", "--grpc-listen", addr["policy"],
                   "--data", str(data / "policy"), "--transfer-address", addr["transfer"],
                   *dial],
        "scanner": ["scanner", "--grpc-listen", addr["scanner"],
                    "--data", str(data / "scanner"), "--transfer-address", addr["transfer"],
                    *scanner, *dial],
        "gateway": ["gateway", "--grpc-listen", addr["gateway"], "--http-listen", addr["http"],
                    "--data", str(data / "gateway"), "--policy-address", addr["policy"],
                    "--transfer-address", addr["transfer"], "--scanner-address", addr["scanner"],
                    "--reconcile-interval", "0", *dial],
    }
    if "router" in addr:
        # The one address for clients (mirrorctl, SDK, grpcurl).
        cmds["router"] = ["stack.router", "--grpc-listen", addr["router"],
                          "--data", str(data / "router"),
                          "--policy", addr["policy"], "--transfer", addr["transfer"],
                          "--scanner", addr["scanner"], "--gateway", addr["gateway"], *dial]
    return cmds


def wait_serving(
    address: str,
    proc: subprocess.Popen[bytes],
    log: Path,
    timeout: float = 60.0,
    connect: Callable[[str], grpc.Channel] = grpc.insecure_channel,
) -> None:
    """Until the health service at `address` answers SERVING; the log's end if it exits."""
    deadline = time.monotonic() + timeout
    with connect(address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{address} exited: {log.read_text()[-3000:]}")
            try:
                if (stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                        == health_pb2.HealthCheckResponse.SERVING):
                    return
            except grpc.RpcError:
                time.sleep(0.1)
    raise RuntimeError(f"{address} not serving: {log.read_text()[-3000:]}")


def stop(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    """Terminate, last started first; kill what does not end in 15 s."""
    for p in reversed(procs):
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()


@contextmanager
def running(
    cmds: Mapping[str, Sequence[str]],
    logs: Path,
    env: Mapping[str, str],
    *,
    extra: Sequence[str] = (),
    connect: Callable[[str], grpc.Channel] = grpc.insecure_channel,
) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    """Each of `cmds` started in order (`extra` appended to every command line; output in
    `logs`/NAME.log), waited for at its --grpc-listen address; all stopped on exit."""
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, cmd in cmds.items():
            log = logs / f"{name}.log"
            with open(log, "wb") as out:
                procs[name] = subprocess.Popen(
                    [sys.executable, "-m", *cmd, *extra], cwd=ROOT, env=dict(env),
                    stdout=out, stderr=subprocess.STDOUT,
                )
            address = cmd[list(cmd).index("--grpc-listen") + 1]
            wait_serving(address, procs[name], log, connect=connect)
        yield procs
    finally:
        stop(list(procs.values()))
