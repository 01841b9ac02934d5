"""Fixtures for the policy servicer tests: a transfer-service test double and a served policy
service, both real grpc.aio servers on free loopback ports."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import message
from google.rpc import error_details_pb2
from grpc import aio
from grpc_status import rpc_status
from mirror.v1 import common_pb2, policy_pb2, policy_pb2_grpc, transfer_pb2, transfer_pb2_grpc

from policy_service.push_check import GrpcPushChecker
from policy_service.servicer import PolicyServicer
from policy_service.store import PolicyStore
from servicekit.server import RunningServer, start_server

Check = transfer_pb2.ConnectionCheck
SEED_RULE = 'tag endswith "stable" and critical_vulns <= 3'


class TransferDouble(transfer_pb2_grpc.TransferServiceServicer):
    """A stand-in for the transfer service that answers TestConnection, GetEndpoint and
    ListEndpoints as configured.

    Endpoints not in `endpoints` answer NOT_FOUND; `failures[(endpoint, repo)]` names a step
    that fails with a message; while `list_down` > 0 ListEndpoints answers UNAVAILABLE (and
    counts down). TestConnection requests are recorded in `calls`, GetEndpoint names in `gets`.
    """

    service_name = transfer_pb2.DESCRIPTOR.services_by_name["TransferService"].full_name

    def __init__(self) -> None:
        self.endpoints: set[str] = {"dev", "qa"}
        self.failures: dict[tuple[str, str], tuple[int, str]] = {}
        self.calls: list[transfer_pb2.TestConnectionRequest] = []
        self.gets: list[str] = []
        self.list_down = 0
        self.list_calls = 0

    def mount(self, server: aio.Server) -> None:
        transfer_pb2_grpc.add_TransferServiceServicer_to_server(self, server)

    async def GetEndpoint(
        self, request: transfer_pb2.GetEndpointRequest, context: aio.ServicerContext
    ) -> transfer_pb2.Endpoint:
        self.gets.append(request.name)
        if request.name not in self.endpoints:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"endpoint {request.name!r}")
        return transfer_pb2.Endpoint(name=request.name, url=f"http://{request.name}.invalid")

    async def ListEndpoints(
        self, request: transfer_pb2.ListEndpointsRequest, context: aio.ServicerContext
    ) -> transfer_pb2.ListEndpointsResponse:
        self.list_calls += 1
        if self.list_down > 0:
            self.list_down -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "starting")
        return transfer_pb2.ListEndpointsResponse(
            endpoints=[transfer_pb2.Endpoint(name=n) for n in sorted(self.endpoints)]
        )

    async def TestConnection(
        self, request: transfer_pb2.TestConnectionRequest, context: aio.ServicerContext
    ) -> transfer_pb2.TestConnectionResponse:
        self.calls.append(request)
        if request.endpoint not in self.endpoints:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"endpoint {request.endpoint!r}")
        failing = self.failures.get((request.endpoint, request.repository))
        checks = []
        for step in (Check.STEP_REACHABLE, Check.STEP_AUTHENTICATED, Check.STEP_PULL_ALLOWED,
                     Check.STEP_PUSH_ALLOWED):
            if failing and failing[0] == step:
                checks.append(Check(step=step, result=Check.RESULT_FAILED, message=failing[1]))
                break
            checks.append(Check(step=step, result=Check.RESULT_OK))
        return transfer_pb2.TestConnectionResponse(ok=failing is None, checks=checks)


@dataclass
class PolicyEnv:
    stub: policy_pb2_grpc.PolicyServiceStub
    transfer: TransferDouble
    servicer: PolicyServicer
    data: Path
    extra: list[object] = field(default_factory=list)


@pytest.fixture
async def transfer_double() -> AsyncIterator[tuple[TransferDouble, int]]:
    double = TransferDouble()
    running: RunningServer = await start_server([double], "127.0.0.1:0")
    yield double, running.port
    await running.stop(0)


@asynccontextmanager
async def serving(
    data: Path, transfer: tuple[TransferDouble, int], **options: Any
) -> AsyncIterator[PolicyEnv]:
    """A PolicyServicer on `data` (options go to its constructor), started as
    `python -m policy_service` starts it, on a real server; stopped on exit."""
    double, tport = transfer
    tchannel = aio.insecure_channel(f"127.0.0.1:{tport}")
    store = PolicyStore.open(data)
    servicer = PolicyServicer(store, GrpcPushChecker(tchannel, timeout=5), **options)
    running = await start_server([servicer], "127.0.0.1:0")
    await servicer.start()
    channel = aio.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        yield PolicyEnv(policy_pb2_grpc.PolicyServiceStub(channel), double, servicer, data)
    finally:
        await servicer.stop()
        await channel.close()
        await running.stop(0)
        await tchannel.close()
        store.close()


@pytest.fixture
async def env(
    tmp_path: Path, transfer_double: tuple[TransferDouble, int]
) -> AsyncIterator[PolicyEnv]:
    async with serving(tmp_path, transfer_double) as e:
        yield e


def policy(**kw: object) -> policy_pb2.Policy:
    """The seed's policy (endpoint dev, dev/website -> qa:qa/website), with overrides;
    `source` may be a repository name (on endpoint dev) or a PolicySource. A glob source
    without a given target maps onto qa:qa/{repository}."""
    if isinstance(kw.get("source"), str):
        kw["source"] = policy_pb2.PolicySource(endpoint="dev", repository=kw["source"])  # type: ignore[arg-type]
    source = kw.get("source")
    if isinstance(source, policy_pb2.PolicySource) and "*" in source.repository:
        kw.setdefault("target", common_pb2.Target(endpoint="qa", repository="qa/{repository}"))
    base: dict[str, object] = {
        "name": "promote-website",
        "description": "stable builds to QA",
        "source": policy_pb2.PolicySource(endpoint="dev", repository="dev/website"),
        "rule": SEED_RULE,
        "target": common_pb2.Target(endpoint="qa", repository="qa/website"),
        "enabled": True,
    }
    base.update(kw)
    return policy_pb2.Policy(**base)  # type: ignore[arg-type]


def details(err: grpc.RpcError, kind: type[message.Message]) -> list[message.Message]:
    """The google.rpc detail messages of type `kind` carried by a failed call."""
    st = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert st is not None, "the error carries no google.rpc.Status details"
    out = []
    for any_ in st.details:
        if any_.Is(kind.DESCRIPTOR):
            m = kind()
            any_.Unpack(m)
            out.append(m)
    return out


def field_violations(err: grpc.RpcError) -> dict[str, str]:
    brs = details(err, error_details_pb2.BadRequest)
    return {v.field: v.description for br in brs for v in br.field_violations}  # type: ignore[attr-defined]


def precondition_violations(err: grpc.RpcError) -> list[tuple[str, str, str]]:
    pfs = details(err, error_details_pb2.PreconditionFailure)
    return [(v.type, v.subject, v.description) for pf in pfs for v in pf.violations]  # type: ignore[attr-defined]


REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class PolicyProcess:
    proc: subprocess.Popen[str]
    port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_policy_process(data: Path, *extra: str, port: int = 0) -> PolicyProcess:
    """`python -m policy_service` on `port` (0: any free one); returns once it prints where it
    listens."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "policy_service", "--grpc-listen", f"127.0.0.1:{port}",
         "--data", str(data), *extra],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        m = re.search(r"listening on [\d.]+:(\d+)", line)
        if m:
            return PolicyProcess(proc, int(m.group(1)))
    proc.kill()
    proc.wait()
    raise RuntimeError("policy service did not report its port")
