"""End-to-end fixtures: `mirror-stack` as a child process, real registries notifying it."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from mirror.v1 import (
    common_pb2,
    gateway_pb2,
    gateway_pb2_grpc,
    policy_pb2,
    policy_pb2_grpc,
    transfer_pb2,
    transfer_pb2_grpc,
)

from registry_testkit.registry import RegistryProcess
from stack.process import StackProcess

WEBHOOK_SECRET = "e2e-webhook-secret-0123456789"
QA_USER, QA_PASSWORD = "mirror-bot", "mirror-bot-password-1"

T = TypeVar("T")
Run = gateway_pb2.Run


def wait_for(fn: Callable[[], T | None], timeout: float = 30.0, what: str = "condition") -> T:
    """Poll `fn` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


class Clients:
    """Sync gRPC stubs to a running stack."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.policy = policy_pb2_grpc.PolicyServiceStub(self.channel)
        self.transfer = transfer_pb2_grpc.TransferServiceStub(self.channel)
        self.gateway = gateway_pb2_grpc.GatewayServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def add_endpoint(
        self, name: str, reg: RegistryProcess, user: str = "", password: str = ""
    ) -> transfer_pb2.Endpoint:
        return self.transfer.CreateEndpoint(
            transfer_pb2.CreateEndpointRequest(
                endpoint=transfer_pb2.Endpoint(
                    name=name, url=reg.url, username=user, secret=password, ca_pem=reg.ca_pem
                )
            ),
            timeout=30,
        )

    def add_policy(
        self,
        name: str,
        source: str,
        rule: str,
        target_endpoint: str,
        target_repo: str,
        template: str = "%n",
        enabled: bool = True,
        source_endpoint: str = "dev",
        overwrite: int = policy_pb2.OVERWRITE_UNSPECIFIED,
        allow_incomplete_facts: bool = False,
    ) -> policy_pb2.Policy:
        """A policy reading `source` (a repository or glob) on endpoint `source_endpoint`."""
        return self.policy.CreatePolicy(
            policy_pb2.CreatePolicyRequest(
                policy=policy_pb2.Policy(
                    name=name,
                    source=policy_pb2.PolicySource(endpoint=source_endpoint, repository=source),
                    rule=rule,
                    target=common_pb2.Target(endpoint=target_endpoint, repository=target_repo),
                    tag_template=template,
                    enabled=enabled,
                    overwrite=overwrite,  # type: ignore[arg-type]
                    allow_incomplete_facts=allow_incomplete_facts,
                )
            ),
            timeout=60,
        )

    def wait_baseline(self, policy_id: str, timeout: float = 30.0) -> None:
        """Wait until the gateway recorded what the source held when the policy was saved
        (pushes after that whose events are lost are Reconcile's; older tags are Apply's)."""

        def taken() -> bool:
            st = self.gateway.GetPolicyStatus(
                gateway_pb2.GetPolicyStatusRequest(policy_id=policy_id), timeout=10
            )
            return st.HasField("baseline_time")

        wait_for(taken, timeout, f"the baseline of policy {policy_id}")

    def runs(
        self, policy_id: str, states: list[gateway_pb2.Run.State.ValueType] | None = None
    ) -> list[Any]:
        out: list[Any] = []
        token = ""
        while True:
            resp = self.gateway.ListRuns(
                gateway_pb2.ListRunsRequest(
                    policy_id=policy_id, states=states or [], page_size=200, page_token=token
                ),
                timeout=10,
            )
            out.extend(resp.runs)
            token = resp.next_page_token
            if not token:
                return out

    def transfers(self, repository: str = "") -> list[Any]:
        out: list[Any] = []
        token = ""
        while True:
            resp = self.transfer.ListTransfers(
                transfer_pb2.ListTransfersRequest(
                    page_size=500, page_token=token, repository=repository
                ),
                timeout=10,
            )
            out.extend(resp.transfers)
            token = resp.next_page_token
            if not token:
                return out

    def wait_runs_final(
        self, policy_id: str, count: int, timeout: float = 60.0
    ) -> list[Any]:
        """Wait until the policy has `count` runs, all in a final state."""
        final = {
            Run.STATE_SUCCEEDED,
            Run.STATE_FAILED,
            Run.STATE_NOT_MATCHED,
            Run.STATE_BLOCKED,
            Run.STATE_SKIPPED,
        }

        def check() -> list[Any] | None:
            runs = self.runs(policy_id)
            if len(runs) >= count and all(r.state in final for r in runs):
                return runs
            return None

        return wait_for(check, timeout, f"{count} final runs of policy {policy_id}")


def notify_config(stack: StackProcess, name: str = "mirror-gateway") -> dict[str, Any]:
    """The notifications endpoint a registry uses to reach the stack's webhook."""
    return {
        "name": name,
        "url": stack.webhook_url,
        "headers": {"Authorization": [f"Bearer {WEBHOOK_SECRET}"]},
        "timeout": "2s",
        "threshold": 5,
        "backoff": "1s",
    }


def dev_and_qa(
    clients: Clients,
    registry_factory: Callable[..., RegistryProcess],
    notify: StackProcess | None = None,
) -> tuple[RegistryProcess, RegistryProcess]:
    """Two registries registered as endpoints "dev" and "qa"; dev sends its push events to
    `notify`'s webhook when a stack is given (otherwise it sends none)."""
    dev = registry_factory(notifications=[notify_config(notify)]) if notify else registry_factory()
    qa = registry_factory()
    clients.add_endpoint("dev", dev)
    clients.add_endpoint("qa", qa)
    return dev, qa


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[StackProcess]:
    """`mirror-stack` on free loopback ports (periodic reconcile off: tests call it)."""
    proc = StackProcess(
        tmp_path / "stack-data",
        webhook_secret=WEBHOOK_SECRET,
        extra_args=["--reconcile-interval", "0"],
    )
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def clients(stack: StackProcess) -> Iterator[Clients]:
    c = Clients(stack.grpc_address)
    yield c
    c.close()
