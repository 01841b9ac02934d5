"""cosign-format signatures for the policy tests, made with `cryptography` (not the project's
verifier): a simple-signing payload and the base64 signature of its exact bytes (ECDSA P-256
with SHA-256, DER; or Ed25519)."""

from __future__ import annotations

import base64
import json

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from mirror.v1 import common_pb2

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
DIGEST = "sha256:" + "ab" * 32
OTHER_DIGEST = "sha256:" + "cd" * 32


def new_key(kind: str = "ecdsa") -> PrivateKey:
    if kind == "ecdsa":
        return ec.generate_private_key(ec.SECP256R1())
    return ed25519.Ed25519PrivateKey.generate()


def public_pem(key: PrivateKey) -> str:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def payload_for(digest: str, repository: str = "dev/website") -> bytes:
    return json.dumps({
        "critical": {"identity": {"docker-reference": repository},
                     "image": {"docker-manifest-digest": digest},
                     "type": "cosign container image signature"},
        "optional": None,
    }).encode()


def sign(key: PrivateKey, payload: bytes) -> str:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        raw = key.sign(payload, ec.ECDSA(hashes.SHA256()))
    else:
        raw = key.sign(payload)
    return base64.b64encode(raw).decode()


def signature_fact(
    key: PrivateKey, digest: str = DIGEST, *, payload: bytes | None = None,
    manifest_digest: str = "sha256:" + "5e" * 32, **kw: object,
) -> common_pb2.SignatureFact:
    """One signature as the gateway reports it (found by tag)."""
    body = payload_for(digest) if payload is None else payload
    return common_pb2.SignatureFact(
        manifest_digest=manifest_digest, payload=body, signature=sign(key, body),
        found_by="tag", **kw,  # type: ignore[arg-type]
    )
