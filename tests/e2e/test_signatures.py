"""Signatures (issue 13): gate on them, wait for late ones, carry them when asked.

Signatures are in cosign's own format, made by the tests' own code with real keys
(tests/e2e/signing.py); the destination's copy is verified with `cryptography` directly.
SBOMs with a `subject` are pushed and read back with the `oras` SDK
(tests/engine/referrer_artifacts.py).
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
from google.protobuf.duration_pb2 import Duration
from mirror.v1 import common_pb2, gateway_pb2, policy_pb2

from registry_testkit.images import ImageBuilder, push
from registry_testkit.registry import RegistryProcess
from stack.process import StackProcess
from tests.e2e.conftest import Clients, dev_and_qa, wait_for
from tests.e2e.helpers import skopeo_digest, tags_of
from tests.e2e.signing import (
    ANNOTATION,
    new_key,
    public_pem,
    push_oci_signature,
    sbom_image,
    signature_image,
    verify,
)
from tests.engine import referrer_artifacts as art
from tests.support.registry import RegistryFactory

pytestmark = pytest.mark.registry

Run = gateway_pb2.Run


def trust(clients: Clients, name: str, pem: str) -> policy_pb2.TrustedKey:
    return clients.policy.CreateTrustedKey(
        policy_pb2.CreateTrustedKeyRequest(
            key=policy_pb2.TrustedKey(name=name, public_key_pem=pem)
        ),
        timeout=30,
    )


def policy(
    clients: Clients, name: str, rule: str, target: str, *, wait_s: int = 0,
    copy_referrers: tuple[str, ...] = (),
) -> policy_pb2.Policy:
    return clients.policy.CreatePolicy(
        policy_pb2.CreatePolicyRequest(
            policy=policy_pb2.Policy(
                name=name,
                source=policy_pb2.PolicySource(endpoint="dev", repository="dev/app"),
                rule=rule,
                target=common_pb2.Target(endpoint="qa", repository=target),
                tag_template="%n",
                enabled=True,
                signature_wait=Duration(seconds=wait_s),
                copy_referrers=list(copy_referrers),
            )
        ),
        timeout=60,
    )


def get_json(reg: RegistryProcess, path: str, accept: str = "") -> tuple[dict, bytes]:
    req = urllib.request.Request(f"{reg.url}{path}")
    if accept:
        req.add_header("Accept", accept)
    with urllib.request.urlopen(req, timeout=10, context=reg.ssl_context()) as resp:
        raw = resp.read()
    return json.loads(raw), raw


def test_signed_by_waits_for_the_signature_then_mirrors_once(
    stack: StackProcess, clients: Clients, registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    dev, qa = dev_and_qa(clients, registry_factory, stack)
    ci = new_key("ecdsa")
    trust(clients, "ci", public_pem(ci))
    pol = policy(clients, "signed", 'signed_by "ci"', "qa/app", wait_s=120)
    image = push(ImageBuilder(tmp_path / "img").image("1.0"), dev, "dev/app")

    def waiting() -> gateway_pb2.Run | None:
        runs = clients.runs(pol.id)
        return runs[0] if runs and "waiting" in runs[0].message else None

    first = wait_for(waiting, 60, "the run to wait for a signature")
    assert first.state == Run.STATE_PENDING
    assert tags_of(qa, "qa/app") == []

    sig = signature_image(tmp_path, "dev/app", image, ci)
    push(sig, dev, "dev/app")
    wait_for(lambda: tags_of(qa, "qa/app") == ["1.0"], 60, "mirrored once signed")
    assert skopeo_digest(qa, "qa/app", "1.0") == image
    runs = {r.id: r for r in clients.wait_runs_final(pol.id, 2)}
    done = [r for r in runs.values() if r.state == Run.STATE_SUCCEEDED]
    assert len(done) == 1 and done[0].trigger == Run.TRIGGER_LATE_METADATA
    assert sig.tag in done[0].cause and "signature" in done[0].cause
    assert runs[first.id].state == Run.STATE_SKIPPED
    assert len(clients.transfers()) == 1


def test_signed_by_refuses_another_key_and_an_image_that_stays_unsigned(
    stack: StackProcess, clients: Clients, registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    dev, qa = dev_and_qa(clients, registry_factory, stack)
    trust(clients, "ci", public_pem(new_key("ed25519")))
    pol = policy(clients, "signed", 'signed_by "ci"', "qa/app", wait_s=2)
    images = ImageBuilder(tmp_path / "img")
    other = images.image("2.0")
    # Signed, but by a key nobody registered: refused at once, saying why.
    push(signature_image(tmp_path, "dev/app", other.digest, new_key("ecdsa")), dev, "dev/app")
    push(other, dev, "dev/app")
    # Never signed: refused when the wait ends.
    push(images.image("3.0"), dev, "dev/app")
    runs = {r.source.reference: r for r in clients.wait_runs_final(pol.id, 2, timeout=60)}
    assert runs["2.0"].state == Run.STATE_NOT_MATCHED
    # The explanation says why no signature counted: the one found verifies with no key.
    assert "no signature verified by key 'ci'" in runs["2.0"].message, runs["2.0"].message
    assert "signed by another key" in runs["2.0"].message, runs["2.0"].message
    assert runs["3.0"].state == Run.STATE_NOT_MATCHED
    assert "no signature arrived in time" in runs["3.0"].message
    assert tags_of(qa, "qa/app") == []


def test_copied_signature_verifies_at_the_destination_default_copies_none(
    stack: StackProcess, clients: Clients, registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    dev, qa = dev_and_qa(clients, registry_factory, stack)
    ci = new_key("ecdsa")
    carry = policy(clients, "carry", "true", "qa/app", copy_referrers=("signatures",))
    plain = policy(clients, "plain", "true", "qa/plain")
    image = ImageBuilder(tmp_path / "img").image("1.0")
    sig = signature_image(tmp_path, "dev/app", image.digest, ci)
    push(sig, dev, "dev/app")
    push(image, dev, "dev/app")
    wait_for(lambda: sig.tag in tags_of(qa, "qa/app"), 60, "the signature copied")
    clients.wait_runs_final(carry.id, 1)
    clients.wait_runs_final(plain.id, 1)
    assert tags_of(qa, "qa/app") == sorted(["1.0", sig.tag])
    assert tags_of(qa, "qa/plain") == ["1.0"]
    # Byte for byte: same manifest digest, and the signature verifies with the public key.
    assert skopeo_digest(qa, "qa/app", sig.tag) == sig.digest
    doc, _ = get_json(qa, f"/v2/qa/app/manifests/{sig.tag}",
                      "application/vnd.oci.image.manifest.v1+json")
    layer = doc["layers"][0]
    with urllib.request.urlopen(f"{qa.url}/v2/qa/app/blobs/{layer['digest']}", timeout=10,
                                context=qa.ssl_context()) as resp:
        payload = resp.read()
    assert verify(public_pem(ci), payload, layer["annotations"][ANNOTATION])
    assert json.loads(payload)["critical"]["image"]["docker-manifest-digest"] == image.digest

    # Signed after it was mirrored: the signature follows the image to where it went.
    later = ImageBuilder(tmp_path / "img2").image("2.0")
    push(later, dev, "dev/app")
    wait_for(lambda: "2.0" in tags_of(qa, "qa/app"), 60, "2.0 mirrored unsigned")
    late_sig = signature_image(tmp_path, "dev/app", later.digest, ci)
    push(late_sig, dev, "dev/app")
    wait_for(lambda: late_sig.tag in tags_of(qa, "qa/app"), 60, "the late signature carried")
    assert skopeo_digest(qa, "qa/app", late_sig.tag) == late_sig.digest
    carried = [r for r in clients.runs(carry.id) if r.trigger == Run.TRIGGER_LATE_METADATA]
    assert len(carried) == 1 and late_sig.tag in carried[0].cause
    assert late_sig.tag not in tags_of(qa, "qa/plain")


def test_an_imported_scan_report_re_evaluates_the_image_once(
    stack: StackProcess, clients: Clients, registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    from mirror.v1 import scan_pb2, scan_pb2_grpc

    from tests.e2e.scan_images import clean_image

    dev, qa = dev_and_qa(clients, registry_factory, stack)
    pol = policy(clients, "needs-requests", 'component == "requests"', "qa/app")
    image = clean_image(tmp_path, "1.0")
    push(image, dev, "dev/app")
    (first,) = clients.wait_runs_final(pol.id, 1)
    assert first.state == Run.STATE_NOT_MATCHED
    # Another scanner's SBOM for the image arrives later and names requests.
    bom = {"bomFormat": "CycloneDX", "specVersion": "1.5", "components": [
        {"type": "library", "name": "requests", "version": "2.31.0",
         "purl": "pkg:pypi/requests@2.31.0"}]}
    scan_pb2_grpc.ScanServiceStub(clients.channel).ImportReport(
        scan_pb2.ImportReportRequest(
            digest=image.digest, repository="dev/app", format="cyclonedx",
            report=json.dumps(bom).encode(),
        ),
        timeout=30,
    )
    wait_for(lambda: tags_of(qa, "qa/app") == ["1.0"], 60, "mirrored after the report")
    runs = clients.wait_runs_final(pol.id, 2)
    late = [r for r in runs if r.trigger == Run.TRIGGER_LATE_METADATA]
    assert len(late) == 1 and late[0].state == Run.STATE_SUCCEEDED
    assert late[0].cause == "a scan report was imported"
    assert skopeo_digest(qa, "qa/app", "1.0") == image.digest


REQUESTS_BOM = {"bomFormat": "CycloneDX", "specVersion": "1.5", "components": [
    {"type": "library", "name": "requests", "version": "2.31.0",
     "purl": "pkg:pypi/requests@2.31.0"}]}


def event_done(stack: StackProcess, repository: str, tag: str) -> str:
    """Wait for the gateway's log line of the push event of `repository:tag` (the worker
    writes it once the event's runs, if any, are recorded); the line."""

    def line() -> str | None:
        needle = f"dev {repository}:{tag}): "
        text = stack.log_path.read_text(errors="replace")
        return next((x for x in text.splitlines() if needle in x), None)

    return wait_for(line, 60, f"the event of {repository}:{tag} handled")


@pytest.mark.parametrize("kind", ["att", "sbom"])
def test_a_late_attestation_or_sbom_is_read_when_it_re_evaluates_the_image(
    stack: StackProcess, clients: Clients, registry_factory: RegistryFactory, tmp_path: Path,
    kind: str,
) -> None:
    from mirror.v1 import scan_pb2, scan_pb2_grpc

    from tests.e2e.scan_images import clean_image, sbom_attestation

    dev, qa = dev_and_qa(clients, registry_factory, stack)
    pol = policy(clients, "needs-requests", 'component == "requests"', "qa/app")
    image = clean_image(tmp_path, "1.0")
    push(image, dev, "dev/app")
    # Not matched on what the image holds: it is undecided until metadata says otherwise.
    (first,) = clients.wait_runs_final(pol.id, 1)
    assert first.state == Run.STATE_NOT_MATCHED and "requests" in first.message
    # The scanner has cached its report of the image by now; the late arrival names requests.
    late = (
        sbom_attestation(tmp_path, image.digest)
        if kind == "att"
        else sbom_image(tmp_path, image.digest, REQUESTS_BOM)
    )
    push(late, dev, "dev/app")
    wait_for(lambda: tags_of(qa, "qa/app") == ["1.0"], 120, "mirrored after the arrival")
    runs = {r.id: r for r in clients.wait_runs_final(pol.id, 2, timeout=60)}
    again = [r for r in runs.values() if r.trigger == Run.TRIGGER_LATE_METADATA]
    assert len(again) == 1 and again[0].state == Run.STATE_SUCCEEDED
    assert again[0].cause == f"{'attestation' if kind == 'att' else 'SBOM'} {late.tag} arrived"
    assert runs[first.id].state == Run.STATE_NOT_MATCHED
    assert skopeo_digest(qa, "qa/app", "1.0") == image.digest
    assert len(clients.transfers()) == 1
    # The re-evaluation read the arrival: the source's report now includes it.
    report = scan_pb2_grpc.ScanServiceStub(clients.channel).GetScan(
        scan_pb2.GetScanRequest(digest=image.digest, repository="dev/app"), timeout=10
    )
    assert f"referrer:{late.digest}" in report.sources
    assert "requests" in {c.name for c in report.components}


def test_a_late_oci_sbom_is_carried_by_digest_and_never_mirrored_as_an_image(
    stack: StackProcess, clients: Clients, registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    dev, qa = dev_and_qa(clients, registry_factory, stack)
    carry = policy(clients, "carry", "true", "qa/app", copy_referrers=("sboms",))
    plain = policy(clients, "plain", "true", "qa/plain")
    image = ImageBuilder(tmp_path / "img").image("1.0")
    push(image, dev, "dev/app")
    clients.wait_runs_final(carry.id, 1)
    clients.wait_runs_final(plain.id, 1)
    assert tags_of(qa, "qa/app") == ["1.0"] and tags_of(qa, "qa/plain") == ["1.0"]

    # oras pushes the SBOM under its own tag, then (2.8.2 has no referrers API) the
    # sha256-<hex> index naming it: two push events, neither of an image.
    sbom = art.push_sbom(dev, "dev/app", image.digest, len(image.manifest), tmp_path / "sbom")
    index_tag = image.digest.replace(":", "-")
    assert event_done(stack, "dev/app", sbom.tag).endswith(": 0 run(s)")
    event_done(stack, "dev/app", index_tag)
    runs = clients.wait_runs_final(carry.id, 2, timeout=60)
    carried = [r for r in runs if r.trigger == Run.TRIGGER_LATE_METADATA]
    assert len(carried) == 1 and carried[0].state == Run.STATE_SUCCEEDED, carried
    assert carried[0].cause.startswith(f"referrers index {index_tag} arrived (SBOM)")
    assert carried[0].source.reference == "1.0" and carried[0].source_digest == image.digest

    # At the destination by digest, byte for byte, read back with the oras SDK; its
    # sha256-<hex> index (qa has no referrers API either) lists it.
    assert art.pull_sbom(qa, "qa/app", sbom.digest, tmp_path / "pulled") == sbom.document
    doc, _ = art.manifest(qa, "qa/app", sbom.digest)
    assert doc["subject"]["digest"] == image.digest
    index, _ = art.manifest(qa, "qa/app", index_tag)
    assert [m["digest"] for m in index["manifests"]] == [sbom.digest]
    assert tags_of(qa, "qa/app") == sorted(["1.0", index_tag])  # not the SBOM's own tag

    # The default policy copies none of it, and nothing was mirrored as an image.
    assert tags_of(qa, "qa/plain") == ["1.0"]
    assert art.get(qa, f"/v2/qa/plain/manifests/{sbom.digest}", art.OCI_MANIFEST)[0] == 404
    assert [r.source.reference for r in clients.runs(plain.id)] == ["1.0"]
    assert {r.source.reference for r in runs} == {"1.0"}

    # Reconcile does not take them for images either: the index tag is not looked at, the
    # SBOM's tag is refused as a referrer before anything is copied.
    for pol in (carry, plain):
        clients.gateway.Reconcile(gateway_pb2.ReconcileRequest(policy_id=pol.id), timeout=60)
        for r in clients.runs(pol.id):
            assert r.source.reference in ("1.0", sbom.tag), r
            if r.source.reference == sbom.tag:
                assert r.state == Run.STATE_SKIPPED and "attached to" in r.message, r
    assert tags_of(qa, "qa/plain") == ["1.0"]
    assert tags_of(qa, "qa/app") == sorted(["1.0", index_tag])


def test_a_late_signature_in_cosigns_oci_mode_lets_a_waiting_image_through(
    stack: StackProcess, clients: Clients, registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    dev, qa = dev_and_qa(clients, registry_factory, stack)
    ci = new_key("ed25519")
    trust(clients, "ci", public_pem(ci))
    pol = policy(clients, "signed", 'signed_by "ci"', "qa/app", wait_s=120)
    image = ImageBuilder(tmp_path / "img").image("1.0")
    push(image, dev, "dev/app")
    first = wait_for(
        lambda: next((r for r in clients.runs(pol.id) if "waiting" in r.message), None),
        60, "the run to wait for a signature",
    )
    # Pushed by digest (no event: 2.8.2 names no tag), then its sha256-<hex> index entry.
    sig = push_oci_signature(dev, "dev/app", image.digest, len(image.manifest), ci,
                             tmp_path / "sig")
    wait_for(lambda: tags_of(qa, "qa/app") == ["1.0"], 60, "mirrored once signed")
    assert skopeo_digest(qa, "qa/app", "1.0") == image.digest
    runs = {r.id: r for r in clients.wait_runs_final(pol.id, 2)}
    done = [r for r in runs.values() if r.state == Run.STATE_SUCCEEDED]
    assert len(done) == 1 and done[0].trigger == Run.TRIGGER_LATE_METADATA
    index_tag = image.digest.replace(":", "-")
    assert done[0].cause == f"referrers index {index_tag} arrived (signature)"
    assert runs[first.id].state == Run.STATE_SKIPPED
    # The signature the rule accepted is the referrer (found through the index), not a tag.
    assert tags_of(dev, "dev/app") == sorted(["1.0", index_tag])
    assert art.manifest(dev, "dev/app", sig)[0]["subject"]["digest"] == image.digest


def test_a_late_oci_sbom_referrer_is_read_when_it_re_evaluates_the_image(
    stack: StackProcess, clients: Clients, registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    from mirror.v1 import scan_pb2, scan_pb2_grpc

    from tests.e2e.scan_images import clean_image

    dev, qa = dev_and_qa(clients, registry_factory, stack)
    # The oras SBOM (tests/engine/referrer_artifacts.py) names busybox; the image has none.
    pol = policy(clients, "needs-busybox", 'component == "busybox"', "qa/app")
    image = clean_image(tmp_path, "1.0")
    push(image, dev, "dev/app")
    (first,) = clients.wait_runs_final(pol.id, 1)
    assert first.state == Run.STATE_NOT_MATCHED and "busybox" in first.message

    # An OCI artifact whose subject is the image, pushed with the oras SDK; 2.8.2 has no
    # referrers API, so its sha256-<hex> index is pushed too, and that push is the arrival.
    sbom = art.push_sbom(dev, "dev/app", image.digest, len(image.manifest), tmp_path / "sbom")
    index_tag = image.digest.replace(":", "-")
    assert event_done(stack, "dev/app", sbom.tag).endswith(": 0 run(s)")
    event_done(stack, "dev/app", index_tag)
    wait_for(lambda: tags_of(qa, "qa/app") == ["1.0"], 120, "mirrored after the SBOM")
    runs = {r.id: r for r in clients.wait_runs_final(pol.id, 2, timeout=60)}
    again = [r for r in runs.values() if r.trigger == Run.TRIGGER_LATE_METADATA]
    assert len(again) == 1 and again[0].state == Run.STATE_SUCCEEDED, runs
    assert again[0].cause == f"referrers index {index_tag} arrived (SBOM)"
    assert again[0].source_digest == image.digest
    assert runs[first.id].state == Run.STATE_NOT_MATCHED
    assert skopeo_digest(qa, "qa/app", "1.0") == image.digest
    assert len(clients.transfers()) == 1
    # The re-evaluation's rescan read the referrer into the source's report.
    report = scan_pb2_grpc.ScanServiceStub(clients.channel).GetScan(
        scan_pb2.GetScanRequest(digest=image.digest, repository="dev/app"), timeout=10
    )
    assert f"referrer:{sbom.digest}" in report.sources
    assert ("busybox", "1.36.1") in {(c.name, c.version) for c in report.components}


def test_apply_copies_signatures_only_for_a_policy_that_copies_them(
    stack: StackProcess, clients: Clients, registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    # dev sends no events: Apply is what finds the image and its signature tag.
    dev, qa = dev_and_qa(clients, registry_factory)
    image = push(ImageBuilder(tmp_path / "img").image("1.0"), dev, "dev/app")
    sig = signature_image(tmp_path, "dev/app", image, new_key("ecdsa"))
    push(sig, dev, "dev/app")
    plain = policy(clients, "plain", "true", "qa/plain")
    carry = policy(clients, "carry", "true", "qa/carry", copy_referrers=("signatures",))
    for pol in (plain, carry):
        applied = clients.gateway.ApplyPolicy(
            gateway_pb2.ApplyPolicyRequest(policy_id=pol.id), timeout=60
        )
        # The signature tag is no image of its own: one tag matched, one run.
        assert applied.tags_matched == 1 and [r.source.reference for r in applied.runs] == [
            "1.0"], applied
    wait_for(lambda: tags_of(qa, "qa/carry") == ["1.0", sig.tag], 60, "the signature carried")
    clients.wait_runs_final(plain.id, 1)
    assert tags_of(qa, "qa/plain") == ["1.0"]
    assert skopeo_digest(qa, "qa/carry", sig.tag) == sig.digest
