"""Scan on push at the destination, and what a mirror does not carry (signatures, SBOMs).

The mirror copies just the image: cosign `.sig` / `.att` tags next to it stay at the source
(2.8.2 has no referrers API, so the tag scheme is the only attachment there is). A destination
endpoint with `scan_on_push` scans what lands on it: the gateway asks the scanner to scan the
mirrored image there, and that report is stored for the destination repository.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from mirror.v1 import gateway_pb2, scan_pb2, scan_pb2_grpc, transfer_pb2

from registry_testkit.images import push
from stack.process import StackProcess
from tests.e2e.conftest import Clients, notify_config, wait_for
from tests.e2e.helpers import tags_of
from tests.e2e.scan_images import OSV_DIR, clean_image, cosign_signature, sbom_attestation
from tests.support.registry import RegistryFactory

pytestmark = pytest.mark.registry

Run = gateway_pb2.Run
SCANNED = "scanned at destination: "


def run_of(clients: Clients, policy_id: str, tag: str) -> Run:
    (run,) = [r for r in clients.runs(policy_id) if r.source.reference == tag]
    return run


def wait_message(clients: Clients, policy_id: str, tag: str, text: str) -> Run:
    """The run of `tag` once its message mentions `text` (added after the run finished)."""

    def check() -> Run | None:
        run = run_of(clients, policy_id, tag)
        return run if text in run.message else None

    return wait_for(check, 30, f"{text!r} in the run's message")


def test_scan_on_push_destination_scans_the_mirrored_image(
    stack: StackProcess, clients: Clients, registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    dev = registry_factory(notifications=[notify_config(stack)])
    qa = registry_factory()
    prod = registry_factory()
    clients.add_endpoint("dev", dev)
    clients.transfer.CreateEndpoint(
        transfer_pb2.CreateEndpointRequest(
            endpoint=transfer_pb2.Endpoint(name="qa", url=qa.url, scan_on_push=True)
        ),
        timeout=30,
    )
    clients.add_endpoint("prod", prod)  # scan_on_push off
    # critical_vulns is decided only on loaded vulnerability data (fails closed otherwise).
    scan_pb2_grpc.ScanServiceStub(clients.channel).ImportVulnerabilities(
        scan_pb2.ImportVulnerabilitiesRequest(path=str(OSV_DIR)), timeout=60
    )
    to_qa = clients.add_policy(
        "to-qa", "dev/website", 'tag endswith "stable" and critical_vulns == 0', "qa",
        "qa/website",
    )
    to_prod = clients.add_policy("to-prod", "dev/website", 'tag endswith "stable"', "prod",
                                 "prod/website")
    img = clean_image(tmp_path, "3.0-stable")
    sig = cosign_signature(tmp_path, img.digest)
    att = sbom_attestation(tmp_path, img.digest)
    # Signature and SBOM first, so the source scan of the image surely sees them.
    push(sig, dev, "dev/website")
    push(att, dev, "dev/website")
    push(img, dev, "dev/website")

    # The signature and attestation tags are metadata of the image, not images: one run each.
    assert len(clients.wait_runs_final(to_qa.id, 1)) == 1
    assert len(clients.wait_runs_final(to_prod.id, 1)) == 1
    assert run_of(clients, to_qa.id, "3.0-stable").state == Run.STATE_SUCCEEDED
    assert run_of(clients, to_prod.id, "3.0-stable").state == Run.STATE_SUCCEEDED
    # Only the image travelled: no signature, no attestation tag at either destination.
    assert tags_of(dev, "dev/website") == sorted(["3.0-stable", sig.tag, att.tag])
    assert tags_of(qa, "qa/website") == ["3.0-stable"]
    assert tags_of(prod, "prod/website") == ["3.0-stable"]

    run = wait_message(clients, to_qa.id, "3.0-stable", SCANNED)
    assert run.message.startswith("mirrored to qa/website:3.0-stable on endpoint qa; " + SCANNED)
    assert "vulnerabilities: 0 critical" in run.message

    scan = scan_pb2_grpc.ScanServiceStub(clients.channel)
    latest = scan.GetScan(scan_pb2.GetScanRequest(digest=img.digest), timeout=10)
    assert latest.repository == "qa/website"
    source = scan.GetScan(
        scan_pb2.GetScanRequest(digest=img.digest, repository="dev/website"), timeout=10
    )
    assert source.repository == "dev/website"
    # The source's report includes its attached SBOM; the destination has none to read.
    assert f"referrer:{att.digest}" in source.sources
    assert "requests" in {c.name for c in source.components}
    assert list(latest.sources) == ["layers"]
    assert "requests" not in {c.name for c in latest.components}
    layer_names = {c.name for c in source.components} - {"requests"}
    assert {c.name for c in latest.components} == layer_names and "openssl" in layer_names
    assert f"{len(latest.components)} components" in run.message

    # prod does not scan on push: no report for its copy, nothing added to its run.
    assert SCANNED not in run_of(clients, to_prod.id, "3.0-stable").message
    with pytest.raises(grpc.RpcError) as exc:
        scan.GetScan(
            scan_pb2.GetScanRequest(digest=img.digest, repository="prod/website"), timeout=10
        )
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND
    assert "scan on push of qa/qa/website@" + img.digest in stack.log_path.read_text()


def test_a_refused_destination_scan_is_noted_and_the_run_stays_succeeded(
    stack: StackProcess, clients: Clients, registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    from tests.scanner import ocikit
    from tests.scanner.layerkit import layer

    dev = registry_factory(notifications=[notify_config(stack)])
    qa = registry_factory()
    clients.add_endpoint("dev", dev)
    clients.transfer.CreateEndpoint(
        transfer_pb2.CreateEndpointRequest(
            endpoint=transfer_pb2.Endpoint(name="qa", url=qa.url, scan_on_push=True)
        ),
        timeout=30,
    )
    # No scan rule: the source is never scanned; only the destination's scan sees the layer.
    pol = clients.add_policy("p", "dev/tool", 'tag endswith "stable"', "qa", "qa/tool")
    evil = ocikit.image(tmp_path, "9.0-stable", [layer({"../../etc/cron.d/x": b"boom"})])
    push(evil, dev, "dev/tool")

    (done,) = clients.wait_runs_final(pol.id, 1)
    assert done.state == Run.STATE_SUCCEEDED
    run = wait_message(clients, pol.id, "9.0-stable", "destination scan")
    assert run.state == Run.STATE_SUCCEEDED
    assert "destination scan failed: FAILED_PRECONDITION" in run.message
    assert "PATH_ESCAPE" in run.message
    assert tags_of(qa, "qa/tool") == ["9.0-stable"]


def test_a_scan_owed_at_a_crash_is_done_after_restart(
    registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    import time

    from gateway.schema import open_database
    from tests.e2e.conftest import WEBHOOK_SECRET

    stack = StackProcess(
        tmp_path / "data", webhook_secret=WEBHOOK_SECRET, extra_args=["--reconcile-interval", "0"]
    )
    stack.start()
    try:
        dev = registry_factory(notifications=[notify_config(stack)])
        qa = registry_factory()
        c = Clients(stack.grpc_address)
        c.add_endpoint("dev", dev)
        c.add_endpoint("qa", qa)
        pol = c.add_policy("p", "dev/website", 'tag endswith "stable"', "qa", "qa/website")
        img = clean_image(tmp_path, "15.0-stable")
        push(img, dev, "dev/website")
        (run,) = c.wait_runs_final(pol.id, 1)
        assert run.state == Run.STATE_SUCCEEDED and SCANNED not in run.message
        c.close()
        stack.kill()
        # The state a crash leaves after the run was recorded, before the scan was made.
        db = open_database(tmp_path / "data")
        db.execute(
            "INSERT INTO destination_scans (run_id, endpoint, repository, digest, state,"
            " create_time) VALUES (?, 'qa', 'qa/website', ?, 'pending', ?)",
            (run.id, img.digest, time.time()),
        )
        db.close()

        stack.start()
        c = Clients(stack.grpc_address)
        done = wait_message(c, pol.id, "15.0-stable", SCANNED)
        assert done.state == Run.STATE_SUCCEEDED
        scan = scan_pb2_grpc.ScanServiceStub(c.channel)
        report = scan.GetScan(
            scan_pb2.GetScanRequest(digest=img.digest, repository="qa/website"), timeout=10
        )
        assert "openssl" in {comp.name for comp in report.components}
        c.close()
    finally:
        stack.stop()
