"""Scale-out on PostgreSQL (issue 11): three transfer workers and two gateways as separate
processes on one database, 200 pushes, one worker and one gateway SIGKILLed in the middle.

Every push is mirrored exactly once (one successful run, one finished transfer) with the
source's digest, no job is left running, and the destination's proxy log shows no blob
uploaded twice after it was complete (the jobs the dead worker held were finished by the
others from what was already at the destination). The registry's notifications reach the
gateways through the router's webhook port, and every client call goes through the router's
one gRPC address, which skips the dead replicas.
"""

from __future__ import annotations

import hashlib
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import grpc
import psycopg
import pytest
from cryptography.fernet import Fernet
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mirror.v1 import gateway_pb2, transfer_pb2

from registry_testkit.images import OCI_MANIFEST, ImageBuilder, ImageRef, push
from registry_testkit.ports import free_port
from registry_testkit.postgres import available as postgres_available
from registry_testkit.registry import RegistryProcess
from stack.cluster import Cluster
from tests.e2e.conftest import WEBHOOK_SECRET, Clients, wait_for
from tests.engine.pacing_proxy import Exchange, PacingProxy
from tests.support.registry import RegistryFactory

pytestmark = [
    pytest.mark.registry,
    pytest.mark.skipif(not postgres_available(), reason="needs PostgreSQL"),
]

T = TypeVar("T")
Run = gateway_pb2.Run
Transfer = transfer_pb2.Transfer

PUSHES = 200
REPOS = 10
PUSH_RATE = 8.0  # pushes started per second
WORKERS = 3
GATEWAYS = 2
# Short leases: a dead replica's work moves on within seconds.
LEASE_S = "3"
FINAL_RUNS = {Run.STATE_SUCCEEDED, Run.STATE_FAILED, Run.STATE_NOT_MATCHED, Run.STATE_BLOCKED,
              Run.STATE_SKIPPED}


def retrying(fn: Callable[[], T], deadline_s: float = 30.0) -> T:
    """Call `fn`, again on UNAVAILABLE: the one call the router may still send to a replica
    that died before its connection or health check said so."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            return fn()
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:  # type: ignore[attr-defined]
                raise
            time.sleep(0.2)


def wait_until(what: str, fn: Callable[[], T | None], timeout: float) -> T:
    return wait_for(fn, timeout, what)


def all_runs(clients: Clients, policy_id: str) -> list[Any]:
    return retrying(lambda: clients.runs(policy_id))


def all_transfers(clients: Clients) -> list[Any]:
    return retrying(lambda: clients.transfers())


def manifest_digest(reg: RegistryProcess, repo: str, tag: str) -> str:
    """sha256 of the manifest bytes the registry holds (read directly, not via the proxy)."""
    req = urllib.request.Request(f"{reg.url}/v2/{repo}/manifests/{tag}",
                                 headers={"Accept": OCI_MANIFEST})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return "sha256:" + hashlib.sha256(resp.read()).hexdigest()


def blob_present(reg: RegistryProcess, repo: str, digest: str) -> bool:
    req = urllib.request.Request(f"{reg.url}/v2/{repo}/blobs/{digest}", method="HEAD")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status == 200
    except urllib.error.HTTPError:
        return False


Sessions = dict[tuple[str, str], list[tuple[float, float, int]]]


def blob_uploads(exchanges: list[Exchange]) -> Sessions:
    """Each blob upload session at the destination, by (repository, digest): (first request
    time, completion time, status of the request that carried the digest).

    A session is the requests on one upload URL (POST .../uploads/ is answered with it; PATCH
    and the final PUT ?digest= go to it); its digest is the final PUT's. A monolithic
    POST ?digest= or a cross-repository mount POST ?mount= is a session of one request."""
    first: dict[str, float] = {}
    out: Sessions = defaultdict(list)
    for ex in sorted(exchanges, key=lambda e: e.start):
        if "/blobs/uploads/" not in ex.path:
            continue
        repo, _, rest = ex.path.removeprefix("/v2/").partition("/blobs/uploads/")
        query = dict(p.split("=", 1) for p in ex.query.split("&") if "=" in p)
        digest = urllib.parse.unquote(query.get("digest", "") or query.get("mount", ""))
        if rest:  # a session's own URL
            first.setdefault(rest, ex.start)
            if ex.method == "PUT" and digest:
                out[(repo, digest)].append((first[rest], ex.done or ex.start, ex.status))
        elif ex.method == "POST" and digest:
            out[(repo, digest)].append((ex.start, ex.done or ex.start, ex.status))
    return out


def pg_rows(url: str, sql: str, *params: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return list(conn.execute(sql, params).fetchall())  # type: ignore[arg-type]


class Deployment:
    """The policy service, WORKERS transfer workers, GATEWAYS gateways and the router (one
    gRPC address, one webhook address), each its own process, all on one PostgreSQL."""

    def __init__(self, cluster: Cluster, pg_url: str) -> None:
        self.pg_url = pg_url
        router_port, self.router_http = free_port(), free_port()
        router = f"127.0.0.1:{router_port}"
        gateway_http = [free_port() for _ in range(GATEWAYS)]
        # The policy service checks sources and targets through the transfer service.
        self.policy = cluster.add("policy", "policy_service", "--database", pg_url,
                                  "--transfer-address", router)
        self.workers = [
            cluster.add(f"transfer-{i}", "transfer_service", "--database", pg_url,
                        "--worker-id", f"transfer-{i}", "--lease-seconds", LEASE_S,
                        "--policy-address", self.policy.address, "--max-jobs", "4")
            for i in range(1, WORKERS + 1)
        ]
        self.gateways = [
            cluster.add(f"gateway-{i}", "gateway", "--database", pg_url,
                        "--replica-id", f"gateway-{i}", "--lease-seconds", LEASE_S,
                        "--http-listen", f"127.0.0.1:{http}",
                        "--policy-address", self.policy.address,
                        # Through the router: any live worker serves the gateway's calls.
                        "--transfer-address", router,
                        "--reconcile-interval", "0")
            for i, http in enumerate(gateway_http, start=1)
        ]
        self.router = cluster.add(
            "router", "stack.router",
            "--policy", self.policy.address,
            "--transfer", ",".join(w.address for w in self.workers),
            # Never started: the router needs an address, the policy here reads no scan.
            "--scanner", f"127.0.0.1:{free_port()}",
            "--gateway", ",".join(g.address for g in self.gateways),
            "--http-listen", f"127.0.0.1:{self.router_http}",
            *[a for port in gateway_http for a in ("--gateway-http", f"http://127.0.0.1:{port}")],
            port=router_port,
        )

    @property
    def webhook_url(self) -> str:
        return f"http://127.0.0.1:{self.router_http}/events"

    def start(self) -> None:
        # The router first (the others dial it; it marks each backend serving once it is),
        # then the policy service and the workers, then the gateways.
        self.router.start()
        self.policy.start()
        for p in [*self.workers, *self.gateways]:
            p.start()


@pytest.fixture
def deployment(pg_url: str, tmp_path: Path) -> Iterator[Deployment]:
    env = {
        # One key for every worker: they decrypt each other's endpoint credentials.
        "MIRROR_SECRET_KEY": Fernet.generate_key().decode(),
        "MIRROR_WEBHOOK_SECRET": WEBHOOK_SECRET,
    }
    with Cluster(tmp_path / "cluster", env=env) as cluster:
        dep = Deployment(cluster, pg_url)
        dep.start()
        yield dep


def _running_on(pg_url: str, owner: str) -> list[str]:
    """Ids of the jobs `owner` holds a lease on now (the transfer schema's job table)."""
    return [r[0] for r in pg_rows(
        pg_url, "SELECT id FROM transfer.jobs WHERE state = 'running' AND lease_owner = %s",
        owner)]


def _claimed_by(pg_url: str, owner: str) -> int:
    """Events or runs the gateway replica `owner` holds a claim on now."""
    rows = pg_rows(
        pg_url,
        "SELECT (SELECT count(*) FROM gateway.events WHERE claimed_by = %s)"
        " + (SELECT count(*) FROM gateway.runs WHERE tracked_by = %s)", owner, owner)
    return int(rows[0][0])


def test_200_pushes_three_workers_two_gateways_one_of_each_killed(
    deployment: Deployment, registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    notify = {"name": "router", "url": deployment.webhook_url,
              "headers": {"Authorization": [f"Bearer {WEBHOOK_SECRET}"]},
              "timeout": "5s", "threshold": 3, "backoff": "500ms"}
    dev = registry_factory(notifications=[notify])
    qa = registry_factory()
    # The source is read through a pacing proxy (blob bodies at 2 MiB/s) so that jobs take a
    # while and the worker killed holds some half done; the destination through a proxy that
    # logs every request (the upload count).
    src_proxy = PacingProxy(dev.url).start()
    src_proxy.throttle(r"/blobs/sha256:", 2 << 20)
    dst_proxy = PacingProxy(qa.url).start()
    clients = Clients(deployment.router.address)
    try:
        mirrored = _assert_mirrored_once_through_the_kills(
            deployment, clients, dev, qa, src_proxy, dst_proxy, tmp_path
        )
    finally:
        clients.close()
        src_proxy.stop()
        dst_proxy.stop()
    # Every push became exactly one image at the destination with the source's digest (the
    # helper asserts each step: runs, transfers, digests, uploads, the router's health).
    assert mirrored == PUSHES


def _assert_mirrored_once_through_the_kills(
    dep: Deployment, clients: Clients, dev: RegistryProcess, qa: RegistryProcess,
    src_proxy: PacingProxy, dst_proxy: PacingProxy, tmp_path: Path,
) -> int:
    """Push, kill a worker and a gateway mid-burst, and assert every push was mirrored once;
    returns the number of images found at the destination with the source's digest."""
    retrying(lambda: clients.transfer.CreateEndpoint(transfer_pb2.CreateEndpointRequest(
        endpoint=transfer_pb2.Endpoint(name="dev", url=src_proxy.url, aliases=[dev.host])),
        timeout=30))
    retrying(lambda: clients.transfer.CreateEndpoint(transfer_pb2.CreateEndpointRequest(
        endpoint=transfer_pb2.Endpoint(name="qa", url=dst_proxy.url)), timeout=30))
    pol = retrying(lambda: clients.add_policy("fleet", "dev/*", 'tag startswith "v"', "qa",
                                              "qa/{path}"))
    retrying(lambda: clients.wait_baseline(pol.id, timeout=60))

    builder = ImageBuilder(tmp_path / "img")
    # Each image its own blobs (a config, a small layer and one of 300 KB: streamed in
    # chunks, not sent whole), so every upload at the destination belongs to one push.
    images: dict[tuple[str, str], ImageRef] = {}
    for i in range(PUSHES):
        images[(f"app{i % REPOS}", f"v{i:03d}")] = builder.image(
            f"v{i:03d}", layers=[2048, 300_000 + i])

    pushed: list[tuple[str, str]] = []
    failures: list[BaseException] = []

    def push_all() -> None:
        # About 8 pushes a second (a release day's burst), still going when the kill lands.
        with ThreadPoolExecutor(4) as pool:
            futures = []
            for (repo, tag), img in images.items():
                futures.append(pool.submit(push, img, dev, f"dev/{repo}", tag))
                time.sleep(1 / PUSH_RATE)
            for (key, fut) in zip(images, futures, strict=True):
                try:
                    fut.result()
                    pushed.append(key)
                except Exception as exc:  # reported below
                    failures.append(exc)

    pusher = threading.Thread(target=push_all, daemon=True)
    t0 = time.monotonic()
    pusher.start()

    # The kill, in the middle: once a tenth of the transfers are done (the pushes go on), the
    # moment the chosen worker holds running jobs and the chosen gateway holds claims (so both
    # leave work half done).
    victim_worker, victim_gateway = dep.workers[1], dep.gateways[0]
    worker_id, gateway_id = victim_worker.name, victim_gateway.name

    def transfers_done() -> int:
        return int(pg_rows(dep.pg_url,
                           "SELECT count(*) FROM transfer.jobs WHERE state = 'done'")[0][0])

    wait_until("a tenth of the transfers done", lambda: transfers_done() >= PUSHES // 10, 90)
    held = wait_until(f"{worker_id} running jobs",
                      lambda: _running_on(dep.pg_url, worker_id), 30)
    wait_until(f"{gateway_id} holding claims", lambda: _claimed_by(dep.pg_url, gateway_id), 30)
    victim_worker.kill()
    victim_gateway.kill()
    killed_at = time.monotonic() - t0
    still_pushing = pusher.is_alive()

    assert still_pushing, "the pushes were over before the kill"
    pusher.join(timeout=120)
    assert not failures, failures[:3]
    assert sorted(pushed) == sorted(images)

    def every_run_final() -> list[Any] | None:
        runs = all_runs(clients, pol.id)
        ok = len(runs) >= PUSHES and all(r.state in FINAL_RUNS for r in runs)
        return runs if ok else None

    runs = wait_until(f"{PUSHES} final runs", every_run_final, 120)
    elapsed = time.monotonic() - t0

    # One successful run per push and policy.
    by_push: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for r in runs:
        by_push[(r.source.repository.removeprefix("dev/"), r.source.reference)].append(r)
    assert sorted(by_push) == sorted(images)
    twice = {k: [Run.State.Name(r.state) for r in v] for k, v in by_push.items() if len(v) != 1}
    assert not twice, f"pushes with more than one run: {dict(list(twice.items())[:5])}"
    failed = {k: (Run.State.Name(v[0].state), v[0].message) for k, v in by_push.items()
              if v[0].state != Run.STATE_SUCCEEDED}
    assert not failed, dict(list(failed.items())[:5])

    # One finished transfer per push; nothing left running or waiting.
    transfers = all_transfers(clients)
    by_dest: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for t in transfers:
        by_dest[(t.destination.repository.removeprefix("qa/"), t.destination.tag)].append(t)
    assert sorted(by_dest) == sorted(images)
    assert all(len(v) == 1 and v[0].state == Transfer.STATE_DONE for v in by_dest.values()), [
        (k, [Transfer.State.Name(t.state) for t in v]) for k, v in by_dest.items()
        if len(v) != 1 or v[0].state != Transfer.STATE_DONE][:5]
    assert pg_rows(dep.pg_url, "SELECT id, state, lease_owner FROM transfer.jobs"
                   " WHERE state NOT IN ('done')") == []
    # The jobs the dead worker held were finished by the others.
    finishers = dict(pg_rows(dep.pg_url, "SELECT id, lease_owner FROM transfer.jobs"
                             " WHERE id = ANY(%s)", held))
    assert set(finishers) == set(held)
    assert worker_id not in finishers.values(), finishers

    # Byte for byte: the destination holds the source's digest under every tag.
    mirrored = 0
    for (repo, tag), img in images.items():
        assert manifest_digest(qa, f"qa/{repo}", tag) == img.digest, (repo, tag)
        assert by_dest[(repo, tag)][0].digest == img.digest
        mirrored += 1

    # No blob uploaded twice after it was complete: each blob's upload completed once, and
    # no upload of it began after that completion (a resumed job found it there).
    uploads = blob_uploads(list(dst_proxy.exchanges))
    problems = []
    for (repo, tag), img in images.items():
        for blob in img.blobs:
            sessions = uploads.get((f"qa/{repo}", blob.digest), [])
            done = [end for _, end, status in sessions if status == 201]
            assert blob_present(qa, f"qa/{repo}", blob.digest), (repo, blob.digest)
            if len(done) != 1 or any(begin > min(done) for begin, _, _ in sessions):
                problems.append((repo, tag, blob.digest[:19], sessions))
    assert not problems, f"{len(problems)} blobs uploaded more than once: {problems[:3]}"

    # The notifications after the kill reached the live gateway: the router found the dead
    # one unreachable and handed them on.
    assert "trying the next gateway" in dep.router.log_tail(1 << 20)
    # One replica of each down, the router still reports both services serving.
    with grpc.insecure_channel(dep.router.address) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for service in ("mirror.v1.TransferService", "mirror.v1.GatewayService"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, service

    print(f"\n{PUSHES} pushes through {WORKERS} workers and {GATEWAYS} gateways in "
          f"{elapsed:.1f} s; killed {worker_id} (holding {len(held)} jobs) and {gateway_id} "
          f"at {killed_at:.1f} s ({'during' if still_pushing else 'after'} the pushes)")
    return mirrored
