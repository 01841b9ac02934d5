"""cosign-format signatures made with real keys, by the tests' own code (no cosign binary here).

From cosign's published format: the signature of image `sha256:<hex>` is the manifest tagged
`sha256-<hex>.sig`; each layer is a simple-signing payload
(`application/vnd.dev.cosign.simplesigning.v1+json`) whose layer annotation
`dev.cosignproject.cosign/signature` holds the base64 signature of the payload bytes (ECDSA
P-256 with SHA-256, DER; or Ed25519).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from registry_testkit.images import OCI_CONFIG, OCI_MANIFEST, ImageRef, OciLayout

SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
ANNOTATION = "dev.cosignproject.cosign/signature"
PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def new_key(kind: str = "ecdsa") -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1()) if kind == "ecdsa" else (
        ed25519.Ed25519PrivateKey.generate()
    )


def public_pem(key: PrivateKey) -> str:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def _sign(key: PrivateKey, data: bytes) -> bytes:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(hashes.SHA256()))
    return key.sign(data)


def verify(public_key_pem: str, payload: bytes, signature_b64: str) -> bool:
    """Check a cosign signature independently of the project's code."""
    pub = serialization.load_pem_public_key(public_key_pem.encode())
    sig = base64.b64decode(signature_b64)
    try:
        if isinstance(pub, ec.EllipticCurvePublicKey):
            pub.verify(sig, payload, ec.ECDSA(hashes.SHA256()))
        elif isinstance(pub, ed25519.Ed25519PublicKey):
            pub.verify(sig, payload)
        else:
            return False
    except InvalidSignature:
        return False
    return True


def payload_for(repository: str, digest: str) -> bytes:
    return json.dumps({
        "critical": {"identity": {"docker-reference": repository},
                     "image": {"docker-manifest-digest": digest},
                     "type": "cosign container image signature"},
        "optional": None,
    }).encode()


def signature_image(workdir: Path, repository: str, digest: str, key: PrivateKey) -> ImageRef:
    """The `sha256-<hex>.sig` manifest of `digest`, signed with `key`."""
    payload = payload_for(repository, digest)
    sig = base64.b64encode(_sign(key, payload)).decode()
    tag = digest.replace(":", "-") + ".sig"
    layout = OciLayout(workdir / f"layout-sig-{digest[7:19]}-{id(key)}")
    layer = layout.add_blob(payload, SIMPLE_SIGNING)
    cfg = layout.add_blob(json.dumps({"architecture": "", "os": "", "rootfs": {
        "type": "layers", "diff_ids": [layer.digest]}}).encode(), OCI_CONFIG)
    doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cfg.as_dict(),
           "layers": [layer.as_dict(annotations={ANNOTATION: sig})]}
    raw = json.dumps(doc).encode()
    mdesc = layout.add_blob(raw, OCI_MANIFEST)
    layout.tag(tag, mdesc)
    return ImageRef(layout.path, tag, mdesc.digest, OCI_MANIFEST, raw,
                    source=f"oci:{layout.path}:{tag}")
