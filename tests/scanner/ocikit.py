"""OCI layouts with scanner test layers (whiteouts, symlinks, zstd) and cosign-style artifacts,
pushed with the shared registry_testkit (skopeo)."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
from pathlib import Path
from typing import Any

import zstandard

from registry_testkit.images import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    ImageRef,
    OciLayout,
)

LAYER_TYPES = {
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    "none": "application/vnd.oci.image.layer.v1.tar",
}


def _diff_id(blob: bytes) -> str:
    if blob[:2] == b"\x1f\x8b":
        raw = gzip.decompress(blob)
    elif blob[:4] == b"\x28\xb5\x2f\xfd":
        raw = zstandard.ZstdDecompressor().decompressobj().decompress(blob)
    else:
        raw = blob
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def _kind(blob: bytes) -> str:
    return "gzip" if blob[:2] == b"\x1f\x8b" else "zstd" if blob[:4] == b"\x28\xb5\x2f\xfd" else (
        "none")


def _image(layout: OciLayout, layers: list[bytes], platform: str,
           labels: dict[str, str]) -> tuple[Descriptor, bytes]:
    os_, arch, *variant = platform.split("/")
    descs = [layout.add_blob(b, LAYER_TYPES[_kind(b)]) for b in layers]
    cfg: dict[str, Any] = {
        "os": os_, "architecture": arch, "config": {"Labels": labels},
        "rootfs": {"type": "layers", "diff_ids": [_diff_id(b) for b in layers]},
    }
    if variant:
        cfg["variant"] = variant[0]
    cdesc = layout.add_blob(json.dumps(cfg).encode(), OCI_CONFIG)
    doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cdesc.as_dict(),
           "layers": [d.as_dict() for d in descs]}
    raw = json.dumps(doc).encode()
    return layout.add_blob(raw, OCI_MANIFEST), raw


def image(workdir: Path, tag: str, layers: list[bytes], *, platform: str = "linux/amd64",
          labels: dict[str, str] | None = None) -> ImageRef:
    layout = OciLayout(workdir / f"layout-{tag}")
    mdesc, raw = _image(layout, layers, platform, labels or {})
    layout.tag(tag, mdesc)
    return ImageRef(layout.path, tag, mdesc.digest, OCI_MANIFEST, raw,
                    source=f"oci:{layout.path}:{tag}")


def index(workdir: Path, tag: str, per_platform: dict[str, list[bytes]]) -> ImageRef:
    layout = OciLayout(workdir / f"layout-{tag}")
    entries = []
    for plat, layers in per_platform.items():
        mdesc, _raw = _image(layout, layers, plat, {})
        os_, arch, *variant = plat.split("/")
        p = {"os": os_, "architecture": arch, **({"variant": variant[0]} if variant else {})}
        entries.append(mdesc.as_dict(platform=p))
    raw = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode()
    idesc = layout.add_blob(raw, OCI_INDEX)
    layout.tag(tag, idesc)
    return ImageRef(layout.path, tag, idesc.digest, OCI_INDEX, raw,
                    source=f"oci:{layout.path}:{tag}")


def attestation(workdir: Path, subject_digest: str, predicate_type: str,
                predicate: dict[str, Any]) -> ImageRef:
    """A cosign-style attestation image (DSSE envelope layer) tagged sha256-<hex>.att."""
    statement = {
        "_type": "https://in-toto.io/Statement/v0.1",
        "subject": [{"name": "image", "digest": {"sha256": subject_digest.split(":", 1)[1]}}],
        "predicateType": predicate_type,
        "predicate": predicate,
    }
    envelope = {
        "payloadType": "application/vnd.in-toto+json",
        "payload": base64.b64encode(json.dumps(statement).encode()).decode(),
        "signatures": [{"keyid": "", "sig": "MEUCIQ=="}],
    }
    tag = subject_digest.replace(":", "-") + ".att"
    layout = OciLayout(workdir / f"layout-att-{subject_digest[7:19]}")
    layer = layout.add_blob(json.dumps(envelope).encode(), "application/vnd.dsse.envelope.v1+json")
    cfg = layout.add_blob(json.dumps({"architecture": "", "os": "", "rootfs": {
        "type": "layers", "diff_ids": [layer.digest]}}).encode(), OCI_CONFIG)
    doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cfg.as_dict(),
           "layers": [layer.as_dict()]}
    raw = json.dumps(doc).encode()
    mdesc = layout.add_blob(raw, OCI_MANIFEST)
    layout.tag(tag, mdesc)
    return ImageRef(layout.path, tag, mdesc.digest, OCI_MANIFEST, raw,
                    source=f"oci:{layout.path}:{tag}")
