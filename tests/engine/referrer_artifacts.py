"""Referrers made by independent code (not the project's), as real tools would push them.

- signatures: cosign's format, tests/e2e/signing.py (keys made with `cryptography`);
- attestations: an in-toto statement in a DSSE envelope signed with `securesystemslib`,
  stored under cosign's `sha256-<hex>.att` tag;
- SBOMs: an SPDX document pushed with the `oras` Python SDK as an OCI artifact whose
  `subject` is the image. That SDK does not keep the referrers tag schema itself, so, as the
  distribution spec asks of a pushing client when the registry has no referrers API (2.8.2),
  the `sha256-<hex>` index is written here, with the SDK's own requests.
"""

from __future__ import annotations

import json
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import oras.client
import oras.oci
from securesystemslib.dsse import Envelope
from securesystemslib.signer import CryptoSigner

from registry_testkit.images import OCI_CONFIG, OCI_MANIFEST, ImageRef, OciLayout
from registry_testkit.registry import RegistryProcess

DSSE = "application/vnd.dsse.envelope.v1+json"
IN_TOTO = "application/vnd.in-toto+json"
SPDX = "application/spdx+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def get(reg: Any, path: str, accept: str = "") -> tuple[int, bytes, dict[str, str]]:
    """A plain GET of the registry (or a proxy of it) with urllib, not the project's client;
    error statuses are returned."""
    req = urllib.request.Request(f"{reg.url}{path}")
    if accept:
        req.add_header("Accept", accept)
    try:
        ctx = reg.ssl_context() if hasattr(reg, "ssl_context") else None
        with urllib.request.urlopen(req, timeout=10, context=ctx) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def tags(reg: RegistryProcess, repo: str) -> list[str]:
    status, body, _ = get(reg, f"/v2/{repo}/tags/list")
    return sorted(json.loads(body).get("tags") or []) if status == 200 else []


def manifest(reg: Any, repo: str, ref: str) -> tuple[dict[str, Any], bytes]:
    status, body, _ = get(reg, f"/v2/{repo}/manifests/{ref}", f"{OCI_MANIFEST}, {OCI_INDEX}")
    assert status == 200, (status, body[:200])
    return json.loads(body), body


def blob(reg: RegistryProcess, repo: str, digest: str) -> bytes:
    status, body, _ = get(reg, f"/v2/{repo}/blobs/{digest}")
    assert status == 200
    return body


# -- attestations (DSSE, securesystemslib) -------------------------------------------------


def statement(image_digest: str, name: str) -> bytes:
    return json.dumps({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": name, "digest": {"sha256": image_digest.split(":", 1)[1]}}],
        "predicateType": "https://slsa.dev/provenance/v1",
        "predicate": {"buildDefinition": {"buildType": "https://example.test/ci"}},
    }).encode()


def attestation_image(
    workdir: Path, repository: str, digest: str, signer: CryptoSigner
) -> ImageRef:
    """cosign's `sha256-<hex>.att`: one layer, a DSSE envelope of an in-toto statement."""
    env = Envelope(payload=statement(digest, repository), payload_type=IN_TOTO, signatures={})
    env.sign(signer)
    layout = OciLayout(workdir / f"layout-att-{digest[7:19]}")
    layer = layout.add_blob(json.dumps(env.to_dict()).encode(), DSSE)
    cfg = layout.add_blob(json.dumps({"architecture": "", "os": "", "rootfs": {
        "type": "layers", "diff_ids": [layer.digest]}}).encode(), OCI_CONFIG)
    doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cfg.as_dict(),
           "layers": [layer.as_dict(annotations={
               "predicateType": "https://slsa.dev/provenance/v1"})]}
    raw = json.dumps(doc).encode()
    mdesc = layout.add_blob(raw, OCI_MANIFEST)
    tag = digest.replace(":", "-") + ".att"
    layout.tag(tag, mdesc)
    return ImageRef(layout.path, tag, mdesc.digest, OCI_MANIFEST, raw,
                    source=f"oci:{layout.path}:{tag}")


def verify_attestation(envelope: bytes, signer: CryptoSigner) -> dict[str, Any]:
    """The verified in-toto statement (raises securesystemslib's VerificationError)."""
    env = Envelope.from_dict(json.loads(envelope))
    env.verify([signer.public_key], 1)
    return dict(json.loads(env.payload))


# -- SBOMs (OCI artifact with a subject, oras SDK) -----------------------------------------


@dataclass
class Sbom:
    digest: str
    document: bytes
    tag: str


def _oras(reg: Any) -> oras.client.OrasClient:
    return oras.client.OrasClient(hostname=reg.host, insecure=reg.url.startswith("http:"))


def push_sbom(
    reg: Any, repo: str, image_digest: str, image_size: int, workdir: Path,
    name: str = "sbom", tag_index: bool = True, media_type: str = SPDX,
) -> Sbom:
    """Push an SPDX SBOM whose subject is the image with the oras SDK, then (`tag_index`, for
    a registry without the referrers API) add it to the `sha256-<hex>` index."""
    workdir.mkdir(parents=True, exist_ok=True)
    doc = json.dumps({"spdxVersion": "SPDX-2.3", "name": name, "SPDXID": "SPDXRef-DOCUMENT",
                      "packages": [{"name": "busybox", "versionInfo": "1.36.1"}]}).encode()
    sbom = workdir / f"{name}.spdx.json"
    sbom.write_bytes(doc)
    config = workdir / f"{name}.config.json"
    config.write_bytes(b"{}")
    client = _oras(reg)
    resp = client.push(
        target=f"{reg.host}/{repo}:{name}",
        files=[f"{sbom}:{media_type}"],
        manifest_config=f"{config}:{media_type}",  # no artifactType in this SDK: the config says it
        subject=oras.oci.Subject(OCI_MANIFEST, image_digest, image_size),
        disable_path_validation=True,
        quiet=True,
    )
    digest = resp.headers["Docker-Content-Digest"]
    size = len(manifest(reg, repo, digest)[1])
    if tag_index:
        _add_to_tag_index(reg, client, repo, image_digest, {
            "mediaType": OCI_MANIFEST, "digest": digest, "size": size, "artifactType": media_type,
        })
    return Sbom(digest, doc, name)


def _add_to_tag_index(
    reg: Any, client: oras.client.OrasClient, repo: str, subject: str,
    desc: dict[str, Any],
) -> None:
    tag = subject.replace(":", "-")
    status, body, _ = get(reg, f"/v2/{repo}/manifests/{tag}", OCI_INDEX)
    index = json.loads(body) if status == 200 else {
        "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    index["manifests"].append(desc)
    resp = client.do_request(
        f"{client.prefix}://{reg.host}/v2/{repo}/manifests/{tag}", "PUT",
        headers={"Content-Type": OCI_INDEX}, data=json.dumps(index).encode(),
    )
    assert resp.status_code == 201, resp.text


def pull_sbom(reg: Any, repo: str, digest: str, outdir: Path) -> bytes:
    """Read the SBOM back with the oras SDK."""
    files = _oras(reg).pull(target=f"{reg.host}/{repo}@{digest}", outdir=str(outdir))
    assert len(files) == 1, files
    return Path(files[0]).read_bytes()
