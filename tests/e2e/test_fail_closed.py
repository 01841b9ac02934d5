"""A gate that cannot be sure does not copy (issue 9, item 5).

Vulnerability rules are decided only on loaded, recent vulnerability data; an image whose
package database was not recognised has unknown components. Both block the run, with the
reason, unless the policy opts out explicitly.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from mirror.v1 import gateway_pb2, scan_pb2, scan_pb2_grpc

from registry_testkit.images import ImageBuilder, push
from stack.process import StackProcess
from tests.e2e.conftest import WEBHOOK_SECRET, Clients, dev_and_qa, wait_for
from tests.e2e.helpers import tags_of
from tests.e2e.scan_images import OSV_DIR, clean_image
from tests.support.registry import RegistryFactory

pytestmark = pytest.mark.registry

Run = gateway_pb2.Run


def import_osv(clients: Clients) -> None:
    resp = scan_pb2_grpc.ScanServiceStub(clients.channel).ImportVulnerabilities(
        scan_pb2.ImportVulnerabilitiesRequest(path=str(OSV_DIR)), timeout=60
    )
    assert resp.imported > 0 and not resp.errors


def test_no_vulnerability_data_blocks_then_reconcile_acts_once_loaded(
    stack: StackProcess, clients: Clients, registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    dev, qa = dev_and_qa(clients, registry_factory, stack)
    pol = clients.add_policy(
        "no-critical", "dev/website", "critical_vulns == 0", "qa", "qa/website"
    )
    push(clean_image(tmp_path, "1.0-stable"), dev, "dev/website")
    (run,) = clients.wait_runs_final(pol.id, 1)
    assert run.state == Run.STATE_BLOCKED
    assert "no vulnerability data" in run.message
    assert tags_of(qa, "qa/website") == []

    # Once the data is there, Reconcile takes the blocked image up again (it was pushed after
    # the policy was saved), and mirrors it.
    import_osv(clients)
    r = clients.gateway.Reconcile(gateway_pb2.ReconcileRequest(policy_id=pol.id), timeout=120)
    assert [x.source.reference for x in r.runs] == ["1.0-stable"]
    wait_for(lambda: tags_of(qa, "qa/website") == ["1.0-stable"], 60, "mirrored once loaded")


def test_stale_vulnerability_data_blocks(
    registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    stack = StackProcess(
        tmp_path / "data", webhook_secret=WEBHOOK_SECRET,
        extra_args=["--reconcile-interval", "0", "--max-vulnerability-age", "2s"],
    )
    stack.start()
    c = Clients(stack.grpc_address)
    try:
        dev, qa = dev_and_qa(c, registry_factory, stack)
        import_osv(c)
        loaded = time.monotonic()
        pol = c.add_policy("no-critical", "dev/website", "critical_vulns == 0", "qa", "qa/web")
        # The data ages past the configured limit (the limit is what is under test).
        wait_for(lambda: time.monotonic() - loaded > 3, 10, "the data to age")
        push(clean_image(tmp_path, "1.0-stable"), dev, "dev/website")
        (run,) = c.wait_runs_final(pol.id, 1)
        assert run.state == Run.STATE_BLOCKED
        assert "vulnerability data is" in run.message and "old" in run.message
        assert tags_of(qa, "qa/web") == []
    finally:
        c.close()
        stack.stop()


def test_unrecognised_image_blocks_component_rules_unless_opted_out(
    stack: StackProcess, clients: Clients, registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    dev, qa = dev_and_qa(clients, registry_factory, stack)
    strict = clients.add_policy("strict", "dev/app", 'component != "bash"', "qa", "qa/strict")
    lax = clients.add_policy(
        "lax", "dev/app", 'component != "bash"', "qa", "qa/lax", allow_incomplete_facts=True
    )
    # Random layers: no dpkg, apk, npm or Python metadata to recognise.
    push(ImageBuilder(tmp_path / "img").image("1.0"), dev, "dev/app")
    (blocked,) = clients.wait_runs_final(strict.id, 1)
    assert blocked.state == Run.STATE_BLOCKED
    assert "components are unknown" in blocked.message
    (opted_out,) = clients.wait_runs_final(lax.id, 1)
    assert opted_out.state == Run.STATE_SUCCEEDED, opted_out.message
    assert tags_of(qa, "qa/strict") == []
    assert tags_of(qa, "qa/lax") == ["1.0"]


def test_package_database_bomb_gives_a_failed_run_with_its_reason(
    stack: StackProcess, clients: Clients, registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    from tests.scanner import ocikit
    from tests.scanner.test_bounds import dpkg_bomb

    dev, qa = dev_and_qa(clients, registry_factory, stack)
    pol = clients.add_policy("no-gpl", "dev/app", 'license != "GPL-3.0-only"', "qa", "qa/app")
    # The 2.2 MB package-database layer (140,000 dpkg records).
    push(ocikit.image(tmp_path, "bomb", [dpkg_bomb(140_000)]), dev, "dev/app")
    started = time.monotonic()
    (run,) = clients.wait_runs_final(pol.id, 1, timeout=60)
    assert time.monotonic() - started < 60
    assert run.state == Run.STATE_FAILED
    assert "scan too big" in run.message, run.message
    assert tags_of(qa, "qa/app") == []
