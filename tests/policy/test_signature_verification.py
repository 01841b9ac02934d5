"""The policy service's signature verification (policy_service.signatures): cosign-format
signatures made with `cryptography` against ECDSA P-256 and Ed25519 trusted keys."""

from __future__ import annotations

import base64

import pytest
from mirror.v1 import common_pb2

from policy_service import signatures
from policy_service.trusted_keys import TrustedKey, parse_public_key
from tests.policy.signing import (
    DIGEST,
    OTHER_DIGEST,
    new_key,
    payload_for,
    public_pem,
    sign,
    signature_fact,
)


def trusted(name: str, private: object) -> TrustedKey:
    key, algorithm, fp = parse_public_key(public_pem(private))  # type: ignore[arg-type]
    return TrustedKey(name, public_pem(private), algorithm, fp, 1, key)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["ecdsa", "ed25519"])
def test_a_signature_verifies_with_its_key_only(kind: str) -> None:
    ci, other = new_key(kind), new_key(kind)
    keys = [trusted("ci", ci), trusted("other", other)]
    out = signatures.verify_one(signature_fact(ci), DIGEST, keys)
    assert list(out.verified_by) == ["ci"] and out.problem == ""
    assert out.found_by == "tag" and out.payload == payload_for(DIGEST)


def test_two_keys_of_one_material_both_verify() -> None:
    ci = new_key()
    keys = [trusted("ci", ci), trusted("ci-copy", ci)]
    out = signatures.verify_one(signature_fact(ci), DIGEST, keys)
    assert list(out.verified_by) == ["ci", "ci-copy"]


def test_another_key_is_named_as_the_problem() -> None:
    out = signatures.verify_one(
        signature_fact(new_key("ed25519")), DIGEST, [trusted("ci", new_key())]
    )
    assert not out.verified_by and out.problem == signatures.ANOTHER_KEY


def test_no_trusted_keys_is_the_problem() -> None:
    out = signatures.verify_one(signature_fact(new_key()), DIGEST, [])
    assert not out.verified_by and out.problem == signatures.NO_KEYS


def test_a_signature_of_another_digest_does_not_sign_this_image() -> None:
    ci = new_key()
    out = signatures.verify_one(signature_fact(ci, OTHER_DIGEST), DIGEST, [trusted("ci", ci)])
    assert not out.verified_by
    assert out.problem.startswith(signatures.OTHER_DIGEST) and "signed by ci" in out.problem


def test_a_tampered_payload_does_not_verify() -> None:
    ci = new_key()
    sig = signature_fact(ci)
    sig.payload = sig.payload.replace(b"dev/website", b"dev/webs1te")
    out = signatures.verify_one(sig, DIGEST, [trusted("ci", ci)])
    assert not out.verified_by and out.problem == signatures.ANOTHER_KEY


@pytest.mark.parametrize("payload", [b"not json", b"[]", b'{"critical": {"image": {}}}'])
def test_a_signed_payload_that_is_not_simple_signing_is_refused(payload: bytes) -> None:
    ci = new_key()
    out = signatures.verify_one(
        signature_fact(ci, payload=payload), DIGEST, [trusted("ci", ci)]
    )
    assert not out.verified_by and "not a cosign simple-signing document" in out.problem


@pytest.mark.parametrize("text", ["", "%%%not base64%%%", "A" * 2000])
def test_a_signature_that_is_not_base64_is_refused(text: str) -> None:
    ci = new_key()
    sig = signature_fact(ci)
    sig.signature = text
    out = signatures.verify_one(sig, DIGEST, [trusted("ci", ci)])
    assert not out.verified_by and out.problem


def test_the_callers_verdict_is_discarded() -> None:
    ci = new_key()
    forged = common_pb2.SignatureFact(
        manifest_digest="sha256:" + "1" * 64, payload=payload_for(DIGEST),
        signature=base64.b64encode(b"x" * 64).decode(), verified_by=["ci"], problem="",
    )
    out = signatures.verify_one(forged, DIGEST, [trusted("ci", ci)])
    assert not out.verified_by and out.problem == signatures.ANOTHER_KEY
    # And a real signature's claimed problem is replaced by the verdict.
    real = signature_fact(ci, verified_by=["someone"], problem="made up")
    out = signatures.verify_one(real, DIGEST, [trusted("ci", ci)])
    assert list(out.verified_by) == ["ci"] and out.problem == ""


def test_an_ecdsa_signature_checked_as_ed25519_and_back_fails_cleanly() -> None:
    ec_key, ed_key = new_key("ecdsa"), new_key("ed25519")
    body = payload_for(DIGEST)
    for signer, verifier in ((ec_key, ed_key), (ed_key, ec_key)):
        sig = common_pb2.SignatureFact(payload=body, signature=sign(signer, body))
        out = signatures.verify_one(sig, DIGEST, [trusted("k", verifier)])
        assert not out.verified_by and out.problem == signatures.ANOTHER_KEY


def test_summary_names_keys_and_problems() -> None:
    ci = new_key()
    bad = signatures.verify_one(signature_fact(new_key()), DIGEST, [trusted("ci", ci)])
    text = signatures.summary([bad], ["ci"])
    assert "no signature verified by key 'ci'" in text and signatures.ANOTHER_KEY in text
    assert "no signature found" in signatures.summary([], ["ci"])
    assert "any trusted key" in signatures.summary([], [])


def test_only_the_first_signatures_are_checked() -> None:
    ci = new_key("ed25519")
    many = [signature_fact(new_key("ed25519"))] * signatures.MAX_SIGNATURES
    out = signatures.verify_all([*many, signature_fact(ci)], DIGEST, [trusted("ci", ci)])
    assert len(out) == signatures.MAX_SIGNATURES + 1
    assert not any(s.verified_by for s in out)
    assert out[-1].problem.startswith("not checked")
