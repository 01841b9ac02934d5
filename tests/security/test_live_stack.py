"""Security of a real mirror-stack: tokens, TLS and mTLS with mirrorctl, /metrics, no leaks."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from mirror import errors
from mirror.client import TlsOptions, connect
from prometheus_client.parser import text_string_to_metric_families

from registry_testkit.images import ImageBuilder, digest_of, push
from stack.process import StackProcess
from tests.clients.livestack import (
    ADMIN_TOKEN,
    MIRRORCTL,
    READ_TOKEN,
    LiveStack,
    notification,
    running,
    start_stack,
    wait_for,
)
from tests.security.pki import write_pems

pytestmark = pytest.mark.registry


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveStack]:
    yield from running(start_stack(tmp_path))


def test_tokens_on_the_stack(live: LiveStack) -> None:
    with connect(live.address, timeout=10) as c:
        with pytest.raises(errors.Unauthenticated):
            list(c.policies.iter())
        with pytest.raises(errors.Unauthenticated):
            list(c.transfers.watch("any"))
    with connect(live.address, token="not-the-right-token-at-all", timeout=10) as c, \
            pytest.raises(errors.Unauthenticated):
        c.transfers.list_endpoints()
    with connect(live.address, token=READ_TOKEN, timeout=10) as c:
        assert list(c.policies.iter()) == []
        assert list(c.transfers.iter_endpoints()) == []
        assert list(c.gateway.iter_runs()) == []
        assert c.policies.validate_rule('tag == "x"').valid
        with pytest.raises(errors.PermissionDenied):
            c.transfers.create_endpoint(name="x", url="http://127.0.0.1:1")
        with pytest.raises(errors.PermissionDenied):
            c.gateway.reconcile()
        with pytest.raises(errors.PermissionDenied):
            c.scanner.import_vulnerabilities(data=b"[]")
    with connect(live.address, token=ADMIN_TOKEN, timeout=10) as c:
        c.transfers.create_endpoint(name="x", url="http://127.0.0.1:1")
        assert [e.name for e in c.transfers.iter_endpoints()] == ["x"]


def test_mtls_stack_with_mirrorctl(tmp_path: Path, registry) -> None:
    pem = write_pems(tmp_path, ("127.0.0.1", "localhost"), "operator@example.test")
    proc = StackProcess(
        tmp_path / "data",
        extra_args=["--tls-cert", str(pem["server-cert"]), "--tls-key", str(pem["server-key"]),
                    "--tls-client-ca", str(pem["ca"]), "--reconcile-interval", "0",
                    # The services inside dial the gRPC port too: mTLS for them as well.
                    "--peer-ca", str(pem["ca"]), "--peer-cert", str(pem["client-cert"]),
                    "--peer-key", str(pem["client-key"])],
        env={"MIRROR_ADMIN_TOKEN": ADMIN_TOKEN},
    )
    for ls in running(proc):
        base = [MIRRORCTL, "--address", ls.address, "--token", ADMIN_TOKEN, "--tls",
                "--ca", str(pem["ca"])]
        ok = subprocess.run([*base, "--cert", str(pem["client-cert"]), "--key",
                             str(pem["client-key"]), "status"], capture_output=True, text=True,
                            timeout=60)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert ok.stdout.count("serving") == 4
        refused = subprocess.run([*base, "endpoint", "list"], capture_output=True, text=True,
                                 timeout=60)
        assert refused.returncode == 1
        assert "cannot reach" in refused.stderr
        # The SDK with the same material.
        tls = TlsOptions.from_files(pem["ca"], pem["client-cert"], pem["client-key"])
        with connect(ls.address, tls=tls, token=ADMIN_TOKEN, timeout=10) as c:
            assert list(c.policies.iter()) == []
            # Creating a policy makes the policy service ask the transfer service (through
            # the stack's own mTLS port) whether the target is pushable.
            c.transfers.create_endpoint(name="qa", url=registry.url)
            made = c.policies.create(name="p", source_endpoint="qa",
                                     source_repository="team/app", rule="true",
                                     endpoint="qa", repository="team/app-copy")
            assert made.id
        with connect(ls.address, tls=TlsOptions.from_files(pem["ca"]), token=ADMIN_TOKEN,
                     timeout=5) as c, pytest.raises(errors.Unavailable):
            c.policies.list()


def test_tls_stack_with_mirrorctl(tmp_path: Path) -> None:
    pem = write_pems(tmp_path, ("127.0.0.1", "localhost"), "operator@example.test")
    proc = StackProcess(
        tmp_path / "data",
        extra_args=["--tls-cert", str(pem["server-cert"]), "--tls-key", str(pem["server-key"]),
                    "--peer-ca", str(pem["ca"]), "--reconcile-interval", "0"],
    )
    for ls in running(proc):
        res = subprocess.run([MIRRORCTL, "--address", ls.address, "--tls", "--ca",
                              str(pem["ca"]), "policy", "list", "-o", "json"],
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        assert res.stdout.strip() == "[]"
        plain = subprocess.run([MIRRORCTL, "--address", ls.address, "policy", "list"],
                               capture_output=True, text=True, timeout=60)
        assert plain.returncode == 1


def _metrics(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = s.name + "".join(f",{k}={v}" for k, v in sorted(s.labels.items()))
            out[key] = s.value
    return out


def _grew(before: dict[str, float], after: dict[str, float], prefix: str) -> float:
    keys = [k for k in after if k.startswith(prefix)]
    return sum(after[k] for k in keys) - sum(before.get(k, 0.0) for k in keys)


def test_metrics_move_when_an_image_is_mirrored(
    tmp_path: Path, registry_factory, images: ImageBuilder
) -> None:
    proc = start_stack(tmp_path)
    dev = registry_factory(notifications=[notification(proc)])
    qa = registry_factory()  # another registry: blobs are uploaded, not mounted
    for ls in running(proc):
        url = f"{proc.http_base}/metrics"
        before = _metrics(url)
        with connect(ls.address, token=ADMIN_TOKEN) as c:
            c.transfers.create_endpoint(name="dev", url=dev.url)
            c.transfers.create_endpoint(name="qa", url=qa.url)
            c.policies.create(name="copy", source_endpoint="dev", source_repository="team/app",
                              rule="true", endpoint="qa", repository="team/app")
            image = images.image("2.0", layers=[40_000])
            push(image, dev, "team/app")
            runs = wait_for("the mirror run to end", lambda: [
                r for r in c.gateway.iter_runs() if r.state >= r.STATE_SUCCEEDED
            ])
            assert runs[0].state == runs[0].STATE_SUCCEEDED, (runs[0].message, ls.log[-3000:])
        assert digest_of(qa, "team/app", "2.0") == image.digest
        after = _metrics(url)
        assert _grew(before, after, "mirror_events_received_total") >= 1
        assert _grew(before, after, "mirror_runs_total,state=succeeded") == 1
        assert _grew(before, after, "mirror_transfers_total,state=done") == 1
        assert _grew(before, after, "mirror_bytes_copied_total") >= 40_000
        assert _grew(before, after, "mirror_policy_evaluations_total") >= 1
        assert ADMIN_TOKEN not in ls.log and READ_TOKEN not in ls.log


@pytest.mark.parametrize(("extra", "needs"), [
    ([], "--peer-ca"),
    (["--tls-client-ca", "{ca}", "--peer-ca", "{ca}"], "--peer-cert/--peer-key"),
])
def test_tls_stack_refuses_to_start_without_peer_options(
    tmp_path: Path, extra: list[str], needs: str
) -> None:
    pem = write_pems(tmp_path, ("127.0.0.1", "localhost"), "operator@example.test")
    args = ["--tls-cert", str(pem["server-cert"]), "--tls-key", str(pem["server-key"]),
            *(a.format(ca=pem["ca"]) for a in extra)]
    res = subprocess.run([sys.executable, "-m", "stack", "--data", str(tmp_path / "d"),
                          "--grpc-listen", "127.0.0.1:0", *args],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert f"needs {needs}" in res.stderr
