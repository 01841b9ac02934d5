"""Issue 10, "rule compilation and evaluation never block the server", for Evaluate, on a real
`mirror-stack` with tokens: stored policies of 32 in-budget regexes each, evaluated over facts
of 150,000 components (3 MB, under the 4 MiB message limit) that any caller may send, a
read-only token included. While that runs, /healthz, the health service and ListPolicies are
polled from another thread and must answer within 1 s throughout.

- A read-only token's large Evaluate runs in a rule worker process and is stopped at its
  deadline (MIRROR_EVALUATE_DEADLINE, 2 s here) in bounded memory.
- The service's (admin token) large Evaluate runs in a thread, to its answer.
- Evaluate is rate-limited per caller (MIRROR_EVALUATE_RATE, 5 a minute here) except for the
  service.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from mirror.v1 import common_pb2, policy_pb2, transfer_pb2, transfer_pb2_grpc

from stack.process import StackProcess
from tests.clients.livestack import ADMIN_TOKEN, READ_TOKEN, WEBHOOK_SECRET
from tests.security.test_rule_dos import ADMIN, READ, Stack, _outcome, _timed
from tests.support.registry import RegistryFactory

pytestmark = pytest.mark.registry

# 32 regexes (the most one rule may hold), each small, none matching "package-N".
HEAVY_RULE = " or ".join(f'component matches "^z{i}[a-y]+$"' for i in range(32))
COMPONENTS = 150_000


def _facts(repository: str) -> common_pb2.ImageFacts:
    return common_pb2.ImageFacts(repository=repository, components=[
        common_pb2.Component(name=f"package-{i}", version="1") for i in range(COMPONENTS)
    ])


def _evaluate(facts: common_pb2.ImageFacts) -> policy_pb2.EvaluateRequest:
    return policy_pb2.EvaluateRequest(facts=facts, endpoint="dev", explain=True)


@pytest.fixture
def stack(tmp_path: Path, registry_factory: RegistryFactory) -> Iterator[Stack]:
    """A stack with tokens; endpoints dev and qa; three heavy policies reading dev/heavy and
    one reading dev/web."""
    proc = StackProcess(
        tmp_path / "stack-data", webhook_secret=WEBHOOK_SECRET,
        env={"MIRROR_ADMIN_TOKEN": ADMIN_TOKEN, "MIRROR_READ_TOKEN": READ_TOKEN,
             "MIRROR_EVALUATE_DEADLINE": "2", "MIRROR_EVALUATE_RATE": "5/minute"},
        extra_args=["--reconcile-interval", "0"],
    )
    proc.start(timeout=60)
    channel = grpc.insecure_channel(proc.grpc_address)
    try:
        transfer = transfer_pb2_grpc.TransferServiceStub(channel)
        for name in ("dev", "qa"):
            reg = registry_factory()
            transfer.CreateEndpoint(transfer_pb2.CreateEndpointRequest(
                endpoint=transfer_pb2.Endpoint(name=name, url=reg.url, ca_pem=reg.ca_pem)),
                metadata=ADMIN, timeout=30)
        s = Stack(proc, channel)
        for i, repo in enumerate(["dev/heavy"] * 3 + ["dev/web"]):
            s.stub.CreatePolicy(policy_pb2.CreatePolicyRequest(policy=policy_pb2.Policy(
                name=f"heavy-{i}", rule=HEAVY_RULE,
                source=policy_pb2.PolicySource(endpoint="dev", repository=repo),
                target=common_pb2.Target(endpoint="qa", repository=f"qa/heavy-{i}"),
                enabled=True)), metadata=ADMIN, timeout=60)
        yield s
    finally:
        channel.close()
        proc.stop()


def test_a_read_tokens_large_evaluate_is_stopped_while_the_stack_answers(stack: Stack) -> None:
    # Three policies explained over the facts: ~10 s of CPU here, well past the 2 s deadline.
    request = _evaluate(_facts("dev/heavy"))
    assert 3 << 20 > request.ByteSize() > 2 << 20
    before = stack.memory()
    with stack.poller() as poll:
        outcome, took = _timed(lambda: _outcome(lambda: stack.stub.Evaluate(
            request, metadata=READ, timeout=30)))
        while poll.rounds < 3:
            time.sleep(0.05)
    assert isinstance(outcome, grpc.RpcError), outcome
    assert outcome.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
    assert "took longer than 2 s" in outcome.details()  # type: ignore[attr-defined]
    assert took < 5.0
    assert not poll.failures, poll.failures
    assert poll.worst < 1.0, f"the stack stalled {poll.worst:.2f} s"
    # The facts were evaluated in a worker process, not in the stack's memory.
    assert stack.memory() - before < 100 << 20


def test_the_services_large_evaluate_runs_off_the_loop_to_its_answer(stack: Stack) -> None:
    request = _evaluate(_facts("dev/web"))
    with stack.poller() as poll:
        resp, took = _timed(lambda: stack.stub.Evaluate(request, metadata=ADMIN, timeout=60))
        while poll.rounds < 3:
            time.sleep(0.05)
    assert isinstance(resp, policy_pb2.EvaluateResponse)
    [result] = resp.results
    assert result.policy_name == "heavy-3" and not result.matched
    clauses = result.explanation.clauses
    assert len(clauses) == 32 and not any(c.result for c in clauses)
    # The explanation shows the first values and says how many more there were.
    assert clauses[0].value.endswith(f"(+{COMPONENTS - 100} more)")
    assert resp.ByteSize() < 64 << 10
    assert not poll.failures, poll.failures
    assert poll.worst < 1.0, f"the stack stalled {poll.worst:.2f} s (the call took {took:.1f} s)"


def test_evaluate_is_rate_limited_per_caller_but_not_for_the_service(stack: Stack) -> None:
    request = policy_pb2.EvaluateRequest(
        facts=common_pb2.ImageFacts(repository="dev/web", tag="1.0"), endpoint="dev")
    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(
            lambda _: _outcome(lambda: stack.stub.Evaluate(request, metadata=READ, timeout=30)),
            range(30)))
        served = list(pool.map(
            lambda _: stack.stub.Evaluate(request, metadata=ADMIN, timeout=30), range(30)))
    refused = [o for o in outcomes if isinstance(o, grpc.RpcError)]
    assert len(refused) == 25, outcomes  # 5 a minute per caller on this stack
    assert all(isinstance(o, policy_pb2.EvaluateResponse) for o in outcomes if o not in refused)
    err = refused[0]
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
    assert "too many evaluations" in err.details()  # type: ignore[attr-defined]
    st = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert st is not None
    assert any(a.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for a in st.details)
    # The service's calls (the admin token the gateway presents) are never refused.
    assert len(served) == 30 and all(len(r.results) == 1 for r in served)
