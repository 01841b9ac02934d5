"""The four services as separate processes, every gRPC hop on mutual TLS with bearer tokens.

Each service serves TLS and requires client certificates; policy -> transfer and
gateway -> policy/transfer/scanner dial with --peer-ca/--peer-cert/--peer-key and carry the
admin token. A push to the dev registry must come out in the qa registry.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mirror import errors
from mirror.channel import sync_channel
from mirror.client import TlsOptions, connect
from mirror.v1 import gateway_pb2

from registry_testkit.images import ImageBuilder, digest_of, push
from registry_testkit.ports import free_port
from tests.security.pki import write_pems
from tests.support.registry import RegistryFactory
from tests.support.services import running, split_commands

pytestmark = pytest.mark.registry

ROOT = Path(__file__).resolve().parents[2]
ADMIN = "split-admin-token-" + "5b8e1f0c7a2d"
WEBHOOK_SECRET = "split-webhook-" + "c3a9e71f"
Run = gateway_pb2.Run


def _health(address: str, tls: TlsOptions) -> int:
    with sync_channel(address, tls) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        return int(stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status)


@pytest.fixture
def split(tmp_path: Path) -> Iterator[tuple[dict[str, str], TlsOptions, list[Path]]]:
    pem = write_pems(tmp_path, ("127.0.0.1",), "mirror-service@example.test")
    tokens = tmp_path / "tokens"
    tokens.write_text(f"admin:{ADMIN}\n")
    tokens.chmod(0o600)
    serve = ["--tls-cert", str(pem["server-cert"]), "--tls-key", str(pem["server-key"]),
             "--tls-client-ca", str(pem["ca"]), "--tokens-file", str(tokens)]
    dial = ["--peer-ca", str(pem["ca"]), "--peer-cert", str(pem["client-cert"]),
            "--peer-key", str(pem["client-key"])]
    addr = {n: f"127.0.0.1:{free_port()}" for n in ("policy", "transfer", "scanner", "gateway",
                                                     "http", "router")}
    # Every service dials the others under mTLS; the router passes the caller's token on and
    # adds none of its own.
    cmds = split_commands(tmp_path, addr, dial=dial)
    tls = TlsOptions.from_files(pem["ca"], pem["client-cert"], pem["client-key"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIRROR_")}
    env["MIRROR_WEBHOOK_SECRET"] = WEBHOOK_SECRET
    logs = [tmp_path / f"{name}.log" for name in cmds]
    with running(cmds, tmp_path, env, extra=serve, connect=lambda a: sync_channel(a, tls)):
        yield addr, tls, logs


def test_push_mirrored_across_mtls_services(
    split: tuple[dict[str, str], TlsOptions, list[Path]], registry_factory: RegistryFactory,
    tmp_path: Path,
) -> None:
    addr, tls, logs = split
    notify = {"name": "gw", "url": f"http://{addr['http']}/events",
              "headers": {"Authorization": [f"Bearer {WEBHOOK_SECRET}"]}}
    dev = registry_factory(notifications=[notify])
    qa = registry_factory()
    services = {"policies": addr["policy"], "transfers": addr["transfer"],
                "gateway": addr["gateway"], "scanner": addr["scanner"]}
    with connect(tls=tls, token=ADMIN, addresses=services) as c:
        c.transfers.create_endpoint(name="dev", url=dev.url)
        c.transfers.create_endpoint(name="qa", url=qa.url)
        # CreatePolicy asks the transfer service (policy -> transfer hop) whether qa is
        # pushable; the vulnerability clause makes the gateway ask the scanner too (this image
        # has no package database and no vulnerability data is loaded: the policy opts out of
        # failing closed, which tests/e2e/test_fail_closed.py covers).
        pol = c.policies.create(
            name="promote", source_endpoint="dev", source_repository="team/app",
            rule='tag endswith "stable" and critical_vulns == 0',
            endpoint="qa", repository="team/app", allow_incomplete_facts=True,
        )
        image = ImageBuilder(tmp_path / "img").image("3.0-stable", layers=[30_000])
        push(image, dev, "team/app")
        deadline = time.monotonic() + 90
        runs: list[gateway_pb2.Run] = []
        while time.monotonic() < deadline:
            runs = list(c.gateway.iter_runs(policy_id=pol.id))
            if runs and runs[0].state >= Run.STATE_SUCCEEDED:
                break
            time.sleep(0.3)
        logs_tail = "\n".join(log.read_text()[-1500:] for log in logs)
        assert runs and runs[0].state == Run.STATE_SUCCEEDED, (runs, logs_tail)
        assert runs[0].transfer_id
        # The scanner was reached through the gateway's mTLS channel: it holds the report.
        assert c.scanner.get_scan(image.digest).digest == image.digest
        # The transfer service asks the policy service (transfer -> policy hop, mTLS) who
        # uses an endpoint before it deletes one.
        with pytest.raises(errors.FailedPrecondition) as in_use:
            c.transfers.delete_endpoint("qa")
        assert "promote" in str(in_use.value)
    assert digest_of(qa, "team/app", "3.0-stable") == image.digest
    for log in logs:
        assert ADMIN not in log.read_text()


def test_a_client_without_certificate_or_token_is_refused(
    split: tuple[dict[str, str], TlsOptions, list[Path]],
) -> None:
    addr, tls, _ = split
    server_only = TlsOptions(ca_pem=tls.ca_pem)
    for name in ("policy", "transfer", "scanner", "gateway"):
        with pytest.raises(grpc.RpcError) as refused:
            _health(addr[name], server_only)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, name
    services = {"policies": addr["policy"], "transfers": addr["transfer"],
                "gateway": addr["gateway"], "scanner": addr["scanner"]}
    with connect(tls=tls, addresses=services, timeout=5) as c:
        calls = [c.policies.list, c.transfers.list_endpoints, c.gateway.list_runs,
                 lambda: c.scanner.get_scan("sha256:" + "0" * 64)]
        for call in calls:
            with pytest.raises(errors.Unauthenticated):
                call()


def test_the_router_passes_the_callers_token_and_adds_none(
    split: tuple[dict[str, str], TlsOptions, list[Path]],
) -> None:
    addr, tls, _ = split
    with connect(tls=tls, token=ADMIN, address=addr["router"], timeout=10) as c:
        c.transfers.create_endpoint(name="dev", url="http://127.0.0.1:1")
        assert [e.name for e in c.transfers.list_endpoints().endpoints] == ["dev"]
        assert not c.policies.list().policies
    # Without a token the backends refuse: the router has the admin token in its environment
    # (the tokens file) but never lends it.
    with connect(tls=tls, address=addr["router"], timeout=5) as c:
        for call in (c.policies.list, c.transfers.list_endpoints, c.gateway.list_runs,
                     lambda: c.scanner.get_scan("sha256:" + "0" * 64)):
            with pytest.raises(errors.Unauthenticated):
                call()
