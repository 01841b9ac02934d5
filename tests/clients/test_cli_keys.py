"""mirrorctl for signatures (issue 13) against a live stack and real registries: trusted keys
(`key add` from a file and stdin, list, get, rm refused while a rule names the key), and a
`signed_by` policy with `copyReferrers: [signatures]` that mirrors the signed image with its
cosign signature (which still verifies at the destination, checked by the tests' own code),
and leaves an image signed with another key behind."""

from __future__ import annotations

import hashlib
import json
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization

from registry_testkit.images import ImageBuilder, digest_of, list_tags, push
from registry_testkit.registry import RegistryProcess
from tests.clients.livestack import LiveStack, running, start_stack, wait_for
from tests.e2e.signing import ANNOTATION, new_key, public_pem, signature_image, verify

pytestmark = pytest.mark.registry


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveStack]:
    yield from running(start_stack(tmp_path))


def _ok(ls: LiveStack, *args: str, stdin: str | None = None) -> str:
    r = ls.ctl(*args, stdin=stdin)
    assert r.code == 0, f"{args}: {r.code}\n{r.stdout}\n{r.stderr}"
    return r.stdout


def _fingerprint(pem: str) -> str:
    der = serialization.load_pem_public_key(pem.encode()).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def test_trusted_keys_and_a_signed_by_policy_that_copies_signatures(
    live: LiveStack, registry_factory: Callable[..., RegistryProcess], images: ImageBuilder,
    tmp_path: Path,
) -> None:
    ls = live
    ci, release, other = new_key("ecdsa"), new_key("ed25519"), new_key("ecdsa")
    pem = tmp_path / "cosign.pub"
    pem.write_text(public_pem(ci))
    added = _ok(ls, "key", "add", "ci", "--public-key", str(pem))
    assert "trusted key ci added (ecdsa-p256" in added and 'signed_by "ci"' in added
    got = ls.ctl("key", "add", "release", "--public-key", "-", "-o", "json",
                 stdin=public_pem(release))
    assert got.code == 0, got.stderr
    assert (got.json()["algorithm"], got.json()["fingerprint"]) == (
        "ed25519", _fingerprint(public_pem(release)))
    keys = ls.ctl("key", "list", "-o", "json").json()
    assert [(k["name"], k["algorithm"], k["fingerprint"]) for k in keys] == [
        ("ci", "ecdsa-p256", _fingerprint(public_pem(ci))),
        ("release", "ed25519", _fingerprint(public_pem(release)))]
    assert ls.ctl("key", "get", "ci", "-o", "json").json()["public_key_pem"] == public_pem(ci)
    table = _ok(ls, "key", "list")
    assert "FINGERPRINT" in table and _fingerprint(public_pem(ci)) in table
    assert "BEGIN PUBLIC KEY" in _ok(ls, "key", "show", "ci")

    again = ls.ctl("key", "add", "ci", "--public-key", str(pem))
    assert again.code == 4 and "already exists" in again.stderr
    garbage = tmp_path / "garbage.pub"
    garbage.write_text("not a key\n")
    bad = ls.ctl("key", "add", "junk", "--public-key", str(garbage))
    assert bad.code == 4 and "public_key_pem" in bad.stderr
    assert ls.ctl("key", "add", "x", "--public-key", str(tmp_path / "missing.pub")).code == 2
    assert ls.ctl("key", "get", "nope").code == 3
    assert ls.ctl("key", "rm", "nope").code == 3

    dev, qa = registry_factory(), registry_factory()
    _ok(ls, "endpoint", "add", "dev", "--url", dev.url)
    _ok(ls, "endpoint", "add", "qa", "--url", qa.url)
    signed = images.image("1.0", layers=[18_000])
    forged = images.image("2.0", layers=[19_000])
    sig = signature_image(tmp_path, "team/app", signed.digest, ci)
    push(signed, dev, "team/app")
    push(sig, dev, "team/app")
    push(forged, dev, "team/app")
    push(signature_image(tmp_path, "team/app", forged.digest, other), dev, "team/app")
    doc = {"policies": [{
        "name": "signed-only", "source": {"endpoint": "dev", "repository": "team/app"},
        "rule": 'tag in ["1.0", "2.0"] and signed_by "ci"',
        "target": {"endpoint": "qa", "repository": "qa/app"},
        "copyReferrers": ["signatures"], "trigger": "manual",
    }]}
    path = tmp_path / "mirror.yaml"
    path.write_text(yaml.safe_dump(doc))
    _ok(ls, "apply", "-f", str(path))
    _ok(ls, "policy", "apply", "signed-only")

    wait_for("the signed image and its signature", lambda: sorted(list_tags(qa, "qa/app")) == [
        "1.0", sig.tag])
    assert digest_of(qa, "qa/app", "1.0") == signed.digest
    assert digest_of(qa, "qa/app", sig.tag) == sig.digest  # byte for byte
    req = urllib.request.Request(f"{qa.url}/v2/qa/app/manifests/{sig.tag}", headers={
        "Accept": "application/vnd.oci.image.manifest.v1+json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        layer = json.loads(resp.read())["layers"][0]
    with urllib.request.urlopen(f"{qa.url}/v2/qa/app/blobs/{layer['digest']}",
                                timeout=10) as resp:
        payload = resp.read()
    assert verify(public_pem(ci), payload, layer["annotations"][ANNOTATION])

    def decided() -> dict[str, dict] | None:  # type: ignore[type-arg]
        listed = ls.ctl("runs", "list", "--policy", "signed-only", "-o", "json").json()
        done = {r["source"]["reference"]: r for r in listed
                if r["state"] not in ("pending", "running")}
        return done if {"1.0", "2.0"} <= set(done) else None

    runs = wait_for("both runs decided", decided)
    assert runs["1.0"]["state"] == "succeeded"
    assert runs["2.0"]["state"] != "succeeded"  # signed, but not by ci
    transfer = ls.ctl("transfer", "show", runs["1.0"]["transfer_id"], "-o", "json").json()
    assert [(r["digest"], r["kind"], r["tag"]) for r in transfer["referrers"]] == [
        (sig.digest, "signature", sig.tag)]
    assert "2.0" not in list_tags(qa, "qa/app")

    # A transfer by hand carries them too when asked.
    _ok(ls, "transfer", "start", "dev/team/app:1.0", "--to", "qa/hand/app",
        "--copy-referrers", "signatures", "--watch")
    assert sorted(list_tags(qa, "hand/app")) == ["1.0", sig.tag]
    hand = ls.ctl("transfer", "list", "-o", "json").json()
    (by_hand,) = [t for t in hand if t["destination"]["repository"] == "hand/app"]
    assert f"signature {sig.tag}" in _ok(ls, "transfer", "show", by_hand["id"])

    in_use = ls.ctl("key", "rm", "ci")
    assert in_use.code == 4 and "signed-only" in in_use.stderr
    _ok(ls, "policy", "rm", "signed-only")
    assert "trusted key ci removed" in _ok(ls, "key", "rm", "ci")
    assert [k["name"] for k in ls.ctl("key", "list", "-o", "json").json()] == ["release"]
