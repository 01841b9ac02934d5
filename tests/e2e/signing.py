"""cosign-format signatures made with real keys, by the tests' own code (no cosign binary here).

From cosign's published format: the signature of image `sha256:<hex>` is the manifest tagged
`sha256-<hex>.sig`; each layer is a simple-signing payload
(`application/vnd.dev.cosign.simplesigning.v1+json`) whose layer annotation
`dev.cosignproject.cosign/signature` holds the base64 signature of the payload bytes (ECDSA
P-256 with SHA-256, DER; or Ed25519). cosign's OCI 1.1 mode puts the same layer in a manifest
of artifact type `application/vnd.dev.cosign.artifact.sig.v1+json` whose `subject` is the
image (pushed here with the oras SDK). `cosign attach sbom` stores an SBOM as the one layer of
the manifest tagged `sha256-<hex>.sbom`.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from registry_testkit.images import OCI_CONFIG, OCI_MANIFEST, ImageRef, OciLayout
from tests.engine.referrer_artifacts import OCI_INDEX, _add_to_tag_index, _oras, get

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


# -- cosign's OCI 1.1 mode and cosign's `.sbom` tag ------------------------------------------

COSIGN_OCI_SIGNATURE = "application/vnd.dev.cosign.artifact.sig.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
CYCLONEDX = "application/vnd.cyclonedx+json"


def push_oci_signature(
    reg: Any, repository: str, digest: str, size: int, key: PrivateKey, workdir: Path
) -> str:
    """cosign's OCI 1.1 mode (`--registry-referrers-mode=oci-1-1`): the signature as a
    manifest of artifact type cosign's signature whose `subject` is the image, pushed by digest
    (no tag) with the oras SDK; where the registry has no referrers API (2.8.2) it is added to
    the `sha256-<hex>` index, as the distribution spec asks of the pusher. Its digest."""
    payload = payload_for(repository, digest)
    sig = base64.b64encode(_sign(key, payload)).decode()
    workdir.mkdir(parents=True, exist_ok=True)
    files = {"payload.json": payload, "empty.json": b"{}"}
    for name, data in files.items():
        (workdir / name).write_bytes(data)
    layer = {"mediaType": SIMPLE_SIGNING, "digest": _digest(payload), "size": len(payload),
             "annotations": {ANNOTATION: sig}}
    config = {"mediaType": OCI_EMPTY, "digest": _digest(b"{}"), "size": 2}
    doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": COSIGN_OCI_SIGNATURE,
           "config": config, "layers": [layer],
           "subject": {"mediaType": OCI_MANIFEST, "digest": digest, "size": size}}
    raw = json.dumps(doc).encode()
    client = _oras(reg)
    container = client.get_container(f"{reg.host}/{repository}:unused")
    for path, desc in ((workdir / "payload.json", layer), (workdir / "empty.json", config)):
        resp = client.upload_blob(str(path), container, desc)
        assert resp.status_code in (200, 201, 202), resp.text
    sig_digest = _digest(raw)
    resp = client.do_request(
        f"{client.prefix}://{reg.host}/v2/{repository}/manifests/{sig_digest}", "PUT",
        headers={"Content-Type": OCI_MANIFEST}, data=raw,
    )
    assert resp.status_code == 201, resp.text
    status, _, _ = get(reg, f"/v2/{repository}/referrers/{digest}", OCI_INDEX)
    if status == 404:
        _add_to_tag_index(reg, client, repository, digest, {
            "mediaType": OCI_MANIFEST, "digest": sig_digest, "size": len(raw),
            "artifactType": COSIGN_OCI_SIGNATURE})
    return sig_digest


def sbom_image(workdir: Path, digest: str, bom: dict[str, Any]) -> ImageRef:
    """cosign's `sha256-<hex>.sbom` (`cosign attach sbom`): one layer, the CycloneDX document."""
    tag = digest.replace(":", "-") + ".sbom"
    layout = OciLayout(workdir / f"layout-sbom-{digest[7:19]}")
    layer = layout.add_blob(json.dumps(bom).encode(), CYCLONEDX)
    cfg = layout.add_blob(json.dumps({"architecture": "", "os": "", "rootfs": {
        "type": "layers", "diff_ids": [layer.digest]}}).encode(), OCI_CONFIG)
    doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cfg.as_dict(),
           "layers": [layer.as_dict()]}
    raw = json.dumps(doc).encode()
    mdesc = layout.add_blob(raw, OCI_MANIFEST)
    layout.tag(tag, mdesc)
    return ImageRef(layout.path, tag, mdesc.digest, OCI_MANIFEST, raw,
                    source=f"oci:{layout.path}:{tag}")


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()
