"""Verify an image's signatures (cosign's format) against the trusted keys, before a rule runs.

The gateway only finds signatures (SignatureFact.payload and .signature); whatever a caller
put in verified_by / problem is discarded and recomputed here, so a `signed_by` gate rests on
this verification alone. A signature counts for key K when its base64 `signature` verifies
over the exact `payload` bytes with K (ECDSA P-256 with SHA-256, DER; or Ed25519) and the
payload is a simple-signing document whose critical.image.docker-manifest-digest is the
image's digest (a signature of another image does not sign this one).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Sequence

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from mirror.v1 import common_pb2

from policy_service.trusted_keys import TrustedKey

# cosign's signatures are ~70 (ECDSA) or 64 (Ed25519) bytes; payloads a few hundred bytes.
MAX_SIGNATURE_B64 = 1024
MAX_PAYLOAD_BYTES = 64 * 1024
# Each signature costs one verification per trusted key, on the event loop: a caller's request
# cannot ask for more than this many (the gateway sends at most its own, smaller, bound).
MAX_SIGNATURES = 32
NO_KEYS = "no trusted keys are registered"
ANOTHER_KEY = "signed by another key (none of the trusted keys verifies it)"
OTHER_DIGEST = "the payload names another digest"


def _payload_digest(payload: bytes) -> str | None:
    """critical.image.docker-manifest-digest of a simple-signing payload (None: not one)."""
    try:
        doc = json.loads(payload)
    except ValueError:
        return None
    crit = doc.get("critical") if isinstance(doc, dict) else None
    image = crit.get("image") if isinstance(crit, dict) else None
    digest = image.get("docker-manifest-digest") if isinstance(image, dict) else None
    return digest if isinstance(digest, str) else None


def _verifies(key: TrustedKey, signature: bytes, payload: bytes) -> bool:
    try:
        if isinstance(key.key, ec.EllipticCurvePublicKey):
            key.key.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
        else:
            key.key.verify(signature, payload)
    except (InvalidSignature, ValueError):
        return False
    return True


def verify_one(
    sig: common_pb2.SignatureFact, digest: str, keys: Sequence[TrustedKey]
) -> common_pb2.SignatureFact:
    """A copy of `sig` with verified_by and problem set from the keys (not the caller)."""
    out = common_pb2.SignatureFact(
        manifest_digest=sig.manifest_digest, found_by=sig.found_by, payload=sig.payload,
        signature=sig.signature,
    )
    if len(sig.payload) > MAX_PAYLOAD_BYTES:
        out.problem = f"the payload is larger than {MAX_PAYLOAD_BYTES} bytes"
        return out
    try:
        raw = base64.b64decode(sig.signature[:MAX_SIGNATURE_B64 + 1], validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if not raw or len(sig.signature) > MAX_SIGNATURE_B64:
        out.problem = "the signature is not base64"
        return out
    if not keys:
        out.problem = NO_KEYS
        return out
    by = [k.name for k in keys if _verifies(k, raw, sig.payload)]
    if not by:
        out.problem = ANOTHER_KEY
        return out
    named = _payload_digest(sig.payload)
    if named is None:
        out.problem = "the payload is not a cosign simple-signing document"
    elif named != digest:
        out.problem = f"{OTHER_DIGEST} ({named[:19]}…, signed by {', '.join(by)})"
    else:
        out.verified_by.extend(by)
    return out


def verify_all(
    sigs: Iterable[common_pb2.SignatureFact], digest: str, keys: Sequence[TrustedKey]
) -> list[common_pb2.SignatureFact]:
    out = []
    for i, s in enumerate(sigs):
        if i < MAX_SIGNATURES:
            out.append(verify_one(s, digest, keys))
        else:
            out.append(common_pb2.SignatureFact(
                manifest_digest=s.manifest_digest, found_by=s.found_by,
                problem=f"not checked: only the first {MAX_SIGNATURES} signatures are",
            ))
    return out


def _short(digest: str) -> str:
    return digest[:19] if digest else "a signature"


def summary(sigs: Sequence[common_pb2.SignatureFact], wanted: Iterable[str] = ()) -> str:
    """Why no signature satisfied the rule: one phrase per signature, naming keys.

    `wanted`: the keys a `signed_by` rule names (empty: any trusted key would do).
    """
    names = sorted(set(wanted))
    need = f"key {', '.join(repr(n) for n in names)}" if names else "any trusted key"
    if not sigs:
        return f"no signature found for the image (the rule needs one verified by {need})"
    parts = []
    for s in sigs:
        if s.verified_by:
            parts.append(f"{_short(s.manifest_digest)} verified by {', '.join(s.verified_by)}")
        else:
            parts.append(f"{_short(s.manifest_digest)}: {s.problem}")
    return f"no signature verified by {need}: " + "; ".join(parts)


def verified_names(sigs: Sequence[common_pb2.SignatureFact]) -> list[str]:
    """The keys that verified at least one signature, in order."""
    return list(dict.fromkeys(n for s in sigs for n in s.verified_by))
