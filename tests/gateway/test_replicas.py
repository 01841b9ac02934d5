"""Two gateway processes on one PostgreSQL database (issue 11, item 3), with a transfer and a
policy service as processes of their own, real registries and real webhooks.

Events reaching either replica (the same event to both, and distinct ones) are each acted on
once: one run per policy and event, one transfer per image. A replica SIGKILLed while it acts
on an event loses its claim and the other one acts on the event, once. Reconcile and
scheduled polls run on one replica (the holder of their lease) and move to the other within
the lease time when their holder is SIGKILLed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import psycopg
import pytest
from google.protobuf.duration_pb2 import Duration
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mirror.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc, policy_pb2

from registry_testkit.images import ImageBuilder, push
from registry_testkit.ports import free_port
from tests.e2e.conftest import WEBHOOK_SECRET, Clients, wait_for
from tests.support.registry import RegistryFactory

pytestmark = pytest.mark.registry

ROOT = Path(__file__).resolve().parents[2]
Run = gateway_pb2.Run
T = TypeVar("T")
LEASE_S = 2.0
FINAL = {Run.STATE_SUCCEEDED, Run.STATE_FAILED, Run.STATE_NOT_MATCHED, Run.STATE_BLOCKED,
         Run.STATE_SKIPPED}


def wait_until(what: str, fn: Callable[[], T | None], timeout: float = 60.0) -> T:
    return wait_for(fn, timeout, what)


def _serving(address: str) -> bool:
    try:
        with grpc.insecure_channel(address) as ch:
            status = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(), timeout=1
            ).status
        return bool(status == health_pb2.HealthCheckResponse.SERVING)
    except grpc.RpcError:
        return False


@dataclass
class Cluster:
    """The processes of one test: transfer, policy, and gateway replicas gw-a and gw-b."""

    tmp: Path
    database: str
    addr: dict[str, str] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def spawn(self, name: str, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if k != "MIRROR_SECRET_KEY"}
        env["MIRROR_WEBHOOK_SECRET"] = WEBHOOK_SECRET
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", *args], cwd=ROOT, env=env,
            stdout=open(self.tmp / f"{name}.log", "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )

    def wait_serving(self, *names: str) -> None:
        def up() -> bool:
            for name in names:
                if self.procs[name].poll() is not None:
                    log = (self.tmp / f"{name}.log").read_text()
                    raise AssertionError(f"{name} exited: {log[-3000:]}")
            return all(_serving(self.addr[n]) for n in names)

        wait_until(f"{', '.join(names)} serving", up, 60)

    def start_gateway(self, name: str) -> None:
        self.addr[f"{name}-http"] = f"127.0.0.1:{free_port()}"
        self.spawn(
            name, "gateway", "--grpc-listen", self.addr[name],
            "--http-listen", self.addr[f"{name}-http"], "--data", str(self.tmp / name),
            "--database", self.database, "--replica-id", name,
            "--lease-seconds", str(LEASE_S), "--reconcile-interval", "1",
            "--policy-address", self.addr["policy"], "--transfer-address", self.addr["transfer"],
        )
        self.wait_serving(name)

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.send_signal(signal.SIGCONT)  # a paused one would not stop
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()

    def healthz(self, name: str) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://{self.addr[f'{name}-http']}/healthz",
                                    timeout=5) as resp:
            doc: dict[str, Any] = json.load(resp)
        return doc

    def sql(self, query: str, *params: object) -> list[tuple[Any, ...]]:
        """Read the gateways' shared tables directly (what no API shows: claims, leases)."""
        with psycopg.connect(self.database, autocommit=True) as conn:
            return list(conn.execute(query, params).fetchall())

    def lease_holder(self, duty: str) -> str:
        rows = self.sql(
            "SELECT owner FROM gateway.leases WHERE name = %s"
            " AND expires > EXTRACT(EPOCH FROM clock_timestamp())",
            duty,
        )
        return str(rows[0][0]) if rows else ""


@pytest.fixture
def cluster(tmp_path: Path, pg_url: str) -> Iterator[Cluster]:
    c = Cluster(tmp_path, pg_url)
    for name in ("transfer", "policy", "gw-a", "gw-b"):
        c.addr[name] = f"127.0.0.1:{free_port()}"
    try:
        c.spawn("transfer", "transfer_service", "--grpc-listen", c.addr["transfer"],
                "--data", str(tmp_path / "transfer"), "--policy-address", c.addr["policy"])
        c.spawn("policy", "policy_service", "--grpc-listen", c.addr["policy"],
                "--data", str(tmp_path / "policy"), "--transfer-address", c.addr["transfer"])
        c.wait_serving("transfer", "policy")
        c.start_gateway("gw-a")
        # gw-a takes every duty before gw-b exists: the tests know who holds what.
        wait_until("gw-a holding the duties", lambda: c.lease_holder("reconcile") == "gw-a", 10)
        c.start_gateway("gw-b")
        yield c
    finally:
        c.stop()


def notify_both(c: Cluster) -> list[dict[str, Any]]:
    """Registry notification endpoints: every event is sent to both replicas."""
    return [
        {"name": name, "url": f"http://{c.addr[f'{name}-http']}/events",
         "headers": {"Authorization": [f"Bearer {WEBHOOK_SECRET}"]}}
        for name in ("gw-a", "gw-b")
    ]


def runs_by_event(clients: Clients, policy_id: str) -> Counter[str]:
    return Counter(r.event_id for r in clients.runs(policy_id))


def transfers_by_tag(clients: Clients, repository: str) -> Counter[str]:
    return Counter(t.destination.tag for t in clients.transfers(repository))


def notify_push(address: str, event_id: str, repository: str, tag: str) -> None:
    with grpc.insecure_channel(address) as ch:
        gateway_pb2_grpc.GatewayServiceStub(ch).NotifyPush(
            gateway_pb2.NotifyPushRequest(
                endpoint="dev", repository=repository, tag=tag, event_id=event_id
            ),
            timeout=30,
        )


def test_events_reaching_either_replica_are_each_acted_on_once(
    cluster: Cluster, registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    dev = registry_factory(notifications=notify_both(cluster))
    qa = registry_factory()
    a, b = Clients(cluster.addr["gw-a"]), Clients(cluster.addr["gw-b"])
    admin = Clients(cluster.addr["transfer"])
    policy = Clients(cluster.addr["policy"])
    try:
        admin.add_endpoint("dev", dev)
        admin.add_endpoint("qa", qa)
        pol = policy.add_policy("p", "dev/app", "true", "qa", "qa/app")
        builder = ImageBuilder(tmp_path / "img")
        # Registry events: each push is delivered to both replicas (one event id).
        push(builder.image("1.0"), dev, "dev/app")
        push(builder.image("2.0"), dev, "dev/app")
        # Distinct events of the same images, to A and to B (CI announcing its pushes).
        notify_push(cluster.addr["gw-a"], "ci-a", "dev/app", "1.0")
        notify_push(cluster.addr["gw-b"], "ci-b", "dev/app", "2.0")
        notify_push(cluster.addr["gw-b"], "ci-a", "dev/app", "1.0")  # A's, again via B

        def settled() -> list[Any] | None:
            runs = a.runs(pol.id)
            done = len(runs) >= 4 and all(r.state in FINAL for r in runs)
            return runs if done and cluster.healthz("gw-b")["inbox_depth"] == 0 else None

        runs = wait_until("every event acted on", settled)
        per_event = runs_by_event(b, pol.id)
        registry_events = [e for e in per_event if not e.startswith("ci-")]
        assert len(registry_events) == 2, per_event  # one per push, not one per replica
        assert set(per_event) == {*registry_events, "ci-a", "ci-b"}
        assert set(per_event.values()) == {1}, per_event  # one run per policy and event
        # One transfer per image; the later events of a tag found it mirrored already.
        assert transfers_by_tag(admin, "qa/app") == Counter({"1.0": 1, "2.0": 1})
        by_tag: dict[str, list[int]] = {}
        for r in runs:
            by_tag.setdefault(r.source.reference, []).append(r.state)
        assert sorted(by_tag["1.0"]) == sorted(by_tag["2.0"]) == [
            Run.STATE_SUCCEEDED, Run.STATE_SKIPPED
        ], by_tag
        # Both replicas saw every delivery; the shared inbox kept one row per event id.
        counts = cluster.healthz("gw-a")["events"]
        assert counts == {"done": 4}, counts
        assert cluster.healthz("gw-a")["events"] == cluster.healthz("gw-b")["events"]
    finally:
        for c in (a, b, admin, policy):
            c.close()


def test_a_replica_killed_while_acting_on_an_event_loses_it_to_the_other(
    cluster: Cluster, registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    dev, qa = registry_factory(), registry_factory()
    admin = Clients(cluster.addr["transfer"])
    policy = Clients(cluster.addr["policy"])
    try:
        admin.add_endpoint("dev", dev)
        admin.add_endpoint("qa", qa)
        pol = policy.add_policy("p", "dev/app", "true", "qa", "qa/app")
        push(ImageBuilder(tmp_path / "img").image("1.0"), dev, "dev/app")
        # The policy service paused: whichever replica claims the event waits on it.
        cluster.procs["policy"].send_signal(signal.SIGSTOP)
        try:
            notify_push(cluster.addr["gw-a"], "stuck", "dev/app", "1.0")

            def claimer() -> str:
                rows = cluster.sql("SELECT claimed_by FROM gateway.events WHERE id = 'stuck'")
                return str(rows[0][0]) if rows else ""

            holder = wait_until("the event claimed", claimer, 10)
            survivor = "gw-b" if holder == "gw-a" else "gw-a"
            cluster.kill(holder)
            ((owner, claim_ends),) = cluster.sql(
                "SELECT claimed_by, claim_expires FROM gateway.events WHERE id = 'stuck'"
            )
            assert owner == holder  # the dead replica's claim, renewed no more
        finally:
            cluster.procs["policy"].send_signal(signal.SIGCONT)
        other = Clients(cluster.addr[survivor])
        try:
            (run,) = wait_until(
                "the survivor's run",
                lambda: [r for r in other.runs(pol.id) if r.state in FINAL],
                60,
            )
            # Taken over once the dead replica's claim ran out (not before), soon after.
            started = run.create_time.ToNanoseconds() / 1e9
            assert claim_ends - 0.1 <= started <= claim_ends + LEASE_S + 10, (claim_ends, run)
            assert run.event_id == "stuck" and run.state == Run.STATE_SUCCEEDED, run
            state = cluster.sql("SELECT state, claimed_by FROM gateway.events WHERE id = 'stuck'")
            assert state == [("done", "")]
            assert transfers_by_tag(admin, "qa/app") == Counter({"1.0": 1})
            assert len(other.runs(pol.id)) == 1
        finally:
            other.close()
    finally:
        admin.close()
        policy.close()


def test_reconcile_and_polls_move_to_the_other_replica_when_their_holder_is_killed(
    cluster: Cluster, registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    quiet, qa = registry_factory(), registry_factory()  # no webhooks: only sweeps see pushes
    admin = Clients(cluster.addr["transfer"])
    policy = Clients(cluster.addr["policy"])
    try:
        admin.add_endpoint("dev", quiet)
        admin.add_endpoint("qa", qa)
        reconciled = policy.add_policy("r", "dev/app", "true", "qa", "qa/app")
        pulled = policy.policy.CreatePolicy(
            policy_pb2.CreatePolicyRequest(
                policy=policy_pb2.Policy(
                    name="pull",
                    source=policy_pb2.PolicySource(endpoint="dev", repository="dev/pulled"),
                    rule="true",
                    target=common_pb2.Target(endpoint="qa", repository="qa/pulled"),
                    tag_template="%n",
                    enabled=True,
                    trigger=policy_pb2.PolicyTrigger(
                        schedule=policy_pb2.ScheduleTrigger(interval=Duration(seconds=1))
                    ),
                )
            ),
            timeout=30,
        )
        holder, survivor = "gw-a", "gw-b"
        # One replica does every duty, the other none of them.
        assert cluster.lease_holder("reconcile") == cluster.lease_holder("polls") == holder
        assert cluster.healthz(survivor)["duties"] == []
        assert "reconcile" in cluster.healthz(holder)["duties"]
        other = Clients(cluster.addr[survivor])
        other.wait_baseline(reconciled.id)  # taken by the holder: Reconcile may act after it
        cluster.kill(holder)
        killed_at = time.monotonic()
        wait_until("the survivor holding reconcile and polls",
                   lambda: cluster.lease_holder("reconcile") == survivor
                   and cluster.lease_holder("polls") == survivor, 3 * LEASE_S + 5)
        # Within the lease (plus a third of it between two tries), not at some later point.
        assert time.monotonic() - killed_at <= 2 * LEASE_S + 3
        assert set(cluster.healthz(survivor)["duties"]) >= {"reconcile", "polls"}
        try:
            builder = ImageBuilder(tmp_path / "img")
            push(builder.image("1.0"), quiet, "dev/app")  # its event is lost: Reconcile's
            push(builder.image("7.0"), quiet, "dev/pulled")  # the next poll's
            (rec,) = wait_until(
                "a reconcile run", lambda: [r for r in other.runs(reconciled.id)
                                            if r.state in FINAL], 60)
            assert rec.trigger == Run.TRIGGER_RECONCILE and rec.state == Run.STATE_SUCCEEDED
            (polled,) = wait_until(
                "a poll's run", lambda: [r for r in other.runs(pulled.id) if r.state in FINAL], 60)
            assert polled.trigger == Run.TRIGGER_SCHEDULE and polled.state == Run.STATE_SUCCEEDED
            assert transfers_by_tag(admin, "qa/app") == Counter({"1.0": 1})
            assert transfers_by_tag(admin, "qa/pulled") == Counter({"7.0": 1})
        finally:
            other.close()
    finally:
        admin.close()
        policy.close()
