"""The scanner issue's "Must show": scan rules mirror clean images, refuse others and say why.

Images carry real package metadata (this machine's dpkg status and DEP-5 copyrights, npm
package.json, Python dist-info); vulnerabilities come from the real OSV records in
tests/scanner/osv imported through ScanService.ImportVulnerabilities.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mirror.v1 import gateway_pb2, scan_pb2, scan_pb2_grpc

from registry_testkit.images import push
from stack.process import StackProcess
from tests.e2e.conftest import Clients, dev_and_qa
from tests.e2e.helpers import skopeo_digest, tags_of
from tests.e2e.scan_images import OSV_DIR, clean_image, gpl3_image, vulnerable_image
from tests.support.registry import RegistryFactory

pytestmark = pytest.mark.registry

Run = gateway_pb2.Run


def scan_stub(clients: Clients) -> scan_pb2_grpc.ScanServiceStub:
    return scan_pb2_grpc.ScanServiceStub(clients.channel)


def import_osv(clients: Clients) -> scan_pb2.ImportVulnerabilitiesResponse:
    resp = scan_stub(clients).ImportVulnerabilities(
        scan_pb2.ImportVulnerabilitiesRequest(path=str(OSV_DIR)), timeout=60
    )
    assert resp.imported == len(list(OSV_DIR.glob("*.json"))) and not resp.errors
    return resp


def by_tag(runs: list[Run]) -> dict[str, Run]:
    return {r.source.reference: r for r in runs}


def test_critical_vulns_rule_mirrors_clean_and_refuses_vulnerable(
    stack: StackProcess, clients: Clients, registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    dev, qa = dev_and_qa(clients, registry_factory, stack)
    import_osv(clients)
    pol = clients.add_policy(
        "no-critical", "dev/website", 'tag endswith "stable" and critical_vulns == 0', "qa",
        "qa/website",
    )
    clean = clean_image(tmp_path, "1.0-stable")
    bad = vulnerable_image(tmp_path, "1.1-stable")
    push(clean, dev, "dev/website")
    push(bad, dev, "dev/website")

    runs = by_tag(clients.wait_runs_final(pol.id, 2))
    assert runs["1.0-stable"].state == Run.STATE_SUCCEEDED, runs["1.0-stable"].message
    refused = runs["1.1-stable"]
    assert refused.state == Run.STATE_NOT_MATCHED
    assert refused.source_digest == bad.digest
    assert "critical_vulns == 0 (value: 2)" in refused.message, refused.message
    assert tags_of(qa, "qa/website") == ["1.0-stable"]
    assert skopeo_digest(qa, "qa/website", "1.0-stable") == clean.digest
    # The facts were the scanner's: its report of the refused image names both advisories.
    report = scan_stub(clients).GetScan(scan_pb2.GetScanRequest(digest=bad.digest), timeout=10)
    assert {v.id for v in report.vulnerabilities} == {"GHSA-35jh-r3h4-6jhm", "GHSA-xvch-5gv4-984h"}
    assert "openssl" in {c.name for c in report.components}


def test_component_and_license_rules(
    stack: StackProcess, clients: Clients, registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    dev, qa = dev_and_qa(clients, registry_factory, stack)
    with_openssl = clients.add_policy(
        "openssl", "dev/app", 'component == "openssl"', "qa", "qa/openssl"
    )
    no_gpl3 = clients.add_policy(
        "no-gpl3", "dev/app", 'license not in ["GPL-3.0-only"]', "qa", "qa/no-gpl3"
    )
    ssl = clean_image(tmp_path, "2.0")
    gpl = gpl3_image(tmp_path, "2.1")
    push(ssl, dev, "dev/app")
    push(gpl, dev, "dev/app")

    comp = by_tag(clients.wait_runs_final(with_openssl.id, 2))
    lic = by_tag(clients.wait_runs_final(no_gpl3.id, 2))
    assert comp["2.0"].state == Run.STATE_SUCCEEDED, comp["2.0"].message
    assert lic["2.0"].state == Run.STATE_SUCCEEDED, lic["2.0"].message
    assert comp["2.1"].state == Run.STATE_NOT_MATCHED
    # The value seen is the set of component names the scan found (grep, libicu72).
    assert 'component == "openssl" (value: ' in comp["2.1"].message, comp["2.1"].message
    assert "libicu72" in comp["2.1"].message
    assert lic["2.1"].state == Run.STATE_NOT_MATCHED
    assert 'license not in ["GPL-3.0-only"] (value: ' in lic["2.1"].message, lic["2.1"].message
    assert "GPL-3.0-only" in lic["2.1"].message.split("(value: ", 1)[1]
    assert tags_of(qa, "qa/openssl") == ["2.0"]
    assert tags_of(qa, "qa/no-gpl3") == ["2.0"]
    # The licenses came from the DEP-5 copyright files, through the scanner.
    report = scan_stub(clients).GetScan(scan_pb2.GetScanRequest(digest=gpl.digest), timeout=10)
    icu = [c for c in report.components if c.name == "libicu72"]
    assert icu and "GPL-3.0-only" in icu[0].licenses
