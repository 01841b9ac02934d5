"""What the rule guards of issue 10 cost and what they hold off, on a real `mirror-stack`.

    .venv/bin/python bench/guards.py [--calls 300]

A stack with an admin and a read token (the default deadlines and rates), two registries as
endpoints, three stored policies of 32 in-budget regexes over `dev/heavy`. While each hostile
call runs, another thread polls /healthz, the gRPC health service and ListPolicies; the table
shows how long the call took, how it ended, the slowest of those answers and how much the
stack's resident memory grew (rule workers are processes of their own):

- the issue's 6 KB rule of 200 large regexes sent to ValidateRule with the read token;
- Evaluate over facts of 150,000 components (3 MB) with the read token (a rule worker, stopped
  at its deadline) and with the service's admin token (a thread, to its answer).

Then the ordinary cases: the median time of `--calls` small Evaluate calls (one image, the
one policy of `dev/web`), as the gateway makes them, and of ValidateRule with a tag preview,
as the console's rule editor asks it while one types. There is no reference tool to compare
with: before the guards, the issue measured 32 s and 900 MB for the first call, with every
RPC and /healthz stalled up to 66 s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
from mirror.v1 import common_pb2, policy_pb2, transfer_pb2, transfer_pb2_grpc  # noqa: E402

from registry_testkit.registry import RegistryOptions, start_registry  # noqa: E402
from stack.process import StackProcess  # noqa: E402
from tests.clients.livestack import ADMIN_TOKEN, READ_TOKEN, WEBHOOK_SECRET  # noqa: E402
from tests.security.test_evaluate_dos import HEAVY_RULE, _evaluate, _facts  # noqa: E402
from tests.security.test_rule_dos import ADMIN, ISSUE_RULE, READ, Stack  # noqa: E402


def _measure(stack: Stack, call: Callable[[], object]) -> tuple[str, float, float, int]:
    """(outcome, seconds, slowest probe in seconds, RSS growth in bytes) of one call."""
    before = stack.memory()
    with stack.poller() as poll:
        started = time.monotonic()
        try:
            resp = call()
            outcome = type(resp).__name__
            if isinstance(resp, policy_pb2.ValidateRuleResponse):
                outcome = "refused: " + (resp.errors[0].message if resp.errors else "valid?")
        except grpc.RpcError as err:
            outcome = f"{err.code().name}: {err.details()}"  # type: ignore[attr-defined]
        took = time.monotonic() - started
        while poll.rounds < 3:
            time.sleep(0.05)
    if poll.failures:
        outcome += f" (probes failed: {poll.failures[:2]})"
    return outcome, took, poll.worst, stack.memory() - before


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=300, help="small Evaluate calls to time")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-guards-") as tmp:
        work = Path(tmp)
        with (
            start_registry(RegistryOptions(), work / "dev") as dev,
            start_registry(RegistryOptions(), work / "qa") as qa,
        ):
            proc = StackProcess(
                work / "stack", webhook_secret=WEBHOOK_SECRET,
                env={"MIRROR_ADMIN_TOKEN": ADMIN_TOKEN, "MIRROR_READ_TOKEN": READ_TOKEN},
                extra_args=["--reconcile-interval", "0"],
            )
            proc.start(timeout=60)
            channel = grpc.insecure_channel(proc.grpc_address)
            try:
                run(Stack(proc, channel), channel, dev.url, qa.url, args.calls)
            finally:
                channel.close()
                proc.stop()


def run(stack: Stack, channel: grpc.Channel, dev_url: str, qa_url: str, calls: int) -> None:
    transfer = transfer_pb2_grpc.TransferServiceStub(channel)
    for name, url in (("dev", dev_url), ("qa", qa_url)):
        transfer.CreateEndpoint(transfer_pb2.CreateEndpointRequest(
            endpoint=transfer_pb2.Endpoint(name=name, url=url)), metadata=ADMIN, timeout=30)
    for i, repo in enumerate(["dev/heavy"] * 3 + ["dev/web"]):
        stack.stub.CreatePolicy(policy_pb2.CreatePolicyRequest(policy=policy_pb2.Policy(
            name=f"heavy-{i}", rule=HEAVY_RULE,
            source=policy_pb2.PolicySource(endpoint="dev", repository=repo),
            target=common_pb2.Target(endpoint="qa", repository=f"qa/heavy-{i}"),
            enabled=True)), metadata=ADMIN, timeout=60)
    # The rule workers start on first use: warm them before anything is timed.
    stack.stub.ValidateRule(policy_pb2.ValidateRuleRequest(rule="true"), metadata=READ,
                            timeout=30)
    heavy = _evaluate(_facts("dev/heavy"))
    cases = [
        ("ValidateRule, the issue's 6 KB rule, read token", lambda: stack.stub.ValidateRule(
            policy_pb2.ValidateRuleRequest(rule=ISSUE_RULE), metadata=READ, timeout=60)),
        ("Evaluate, 150k components x 3 policies, read token",
         lambda: stack.stub.Evaluate(heavy, metadata=READ, timeout=60)),
        ("Evaluate, 150k components x 3 policies, admin token",
         lambda: stack.stub.Evaluate(heavy, metadata=ADMIN, timeout=120)),
    ]
    print(f"{'call':<52} {'took':>7} {'slowest probe':>14} {'RSS +':>8}  outcome")
    for name, call in cases:
        outcome, took, worst, grew = _measure(stack, call)
        print(f"{name:<52} {took:6.2f}s {worst:13.3f}s {grew / 2**20:6.1f}MB  {outcome[:90]}")

    small = policy_pb2.EvaluateRequest(
        facts=common_pb2.ImageFacts(repository="dev/web", tag="1.0"), endpoint="dev")
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        stack.stub.Evaluate(small, metadata=ADMIN, timeout=30)
        times.append(time.perf_counter() - started)
    print(f"small Evaluate over gRPC (admin token, {calls} calls): median "
          f"{statistics.median(times) * 1e3:.2f} ms, p90 "
          f"{statistics.quantiles(times, n=10)[-1] * 1e3:.2f} ms")
    # What the console's rule editor asks as one types (in a rule worker, with its deadline).
    check = policy_pb2.ValidateRuleRequest(
        rule='tag endswith "stable" and critical_vulns <= 3', tag_template="%Y%m%d-%H%M",
        example_tag="1.4-stable")
    times = []
    for _ in range(min(calls, 50)):
        started = time.perf_counter()
        stack.stub.ValidateRule(check, metadata=ADMIN, timeout=30)
        times.append(time.perf_counter() - started)
        time.sleep(0.06)  # rule checks are limited to 20 a second per caller
    print(f"ValidateRule of the seed's rule with a tag preview ({len(times)} calls): median "
          f"{statistics.median(times) * 1e3:.2f} ms, p90 "
          f"{statistics.quantiles(times, n=10)[-1] * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
