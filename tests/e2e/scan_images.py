"""Images with real package metadata for the scanner's end-to-end tests.

Debian layers carry this machine's own dpkg status paragraphs and DEP-5 copyright files; npm
and Python components carry real package.json / dist-info METADATA documents.
"""

from __future__ import annotations

import json
from pathlib import Path

from registry_testkit.images import OCI_CONFIG, OCI_MANIFEST, ImageRef, OciLayout
from scanner.parsers.dpkg import paragraphs
from tests.scanner import ocikit
from tests.scanner.layerkit import Link, dist_info, layer, os_release, package_json

OSV_DIR = Path(__file__).resolve().parents[1] / "scanner" / "osv"

# Machine packages by what they show: openssl (Apache-2.0 ...), zlib (Zlib), and two whose
# copyright names GPL-3.0-only (grep is GPL-3.0-or-later, libicu72 has GPL-3.0-only parts).
OPENSSL_PACKAGES = ("openssl", "libssl3", "zlib1g")
GPL3_PACKAGES = ("grep", "libicu72")
# npm packages below the fixes of GHSA-35jh-r3h4-6jhm (lodash) and GHSA-xvch-5gv4-984h
# (minimist): two critical vulnerabilities once tests/scanner/osv is imported.
VULNERABLE_NPM = (("lodash", "4.17.20"), ("minimist", "1.2.5"))


def _machine_packages(names: tuple[str, ...]) -> tuple[str, dict[str, bytes]]:
    """(dpkg status text, copyright bytes by package) of installed packages of this machine."""
    text = Path("/var/lib/dpkg/status").read_text(encoding="utf-8")
    found: dict[str, str] = {}
    for raw in (p for p in text.split("\n\n") if p.strip()):
        fields = next(paragraphs(raw))
        if fields.get("Package") in names and fields.get("Status", "").endswith(" installed"):
            found.setdefault(fields["Package"], raw.strip("\n") + "\n")
    missing = set(names) - set(found)
    if missing:
        raise LookupError(f"packages not installed on this machine: {sorted(missing)}")
    copyrights = {n: (Path("/usr/share/doc") / n / "copyright").read_bytes() for n in names}
    return "\n".join(found[n] for n in names), copyrights


def debian_layer(packages: tuple[str, ...]) -> bytes:
    """A Debian base layer: os-release (via the usual symlink), dpkg status, copyrights."""
    status, copyrights = _machine_packages(packages)
    return layer({
        "usr/lib/os-release": os_release(),
        "etc/os-release": Link("../usr/lib/os-release"),
        "var/lib/dpkg/status": status.encode(),
        **{f"usr/share/doc/{n}/copyright": data for n, data in copyrights.items()},
    })


def npm_layer(packages: tuple[tuple[str, str], ...]) -> bytes:
    return layer({
        f"srv/node_modules/{name}/package.json": package_json(name, version, license="MIT")
        for name, version in packages
    })


def python_layer(project: str) -> bytes:
    """A dist-info folder copied from this project's venv."""
    folder, meta = dist_info(project)
    return layer({f"usr/lib/python3/dist-packages/{folder}/METADATA": meta})


def clean_image(workdir: Path, tag: str) -> ImageRef:
    """openssl + zlib at this machine's (patched) versions and lark: no known vulnerability."""
    return ocikit.image(
        workdir, tag, [debian_layer(OPENSSL_PACKAGES), python_layer("lark")]
    )


def vulnerable_image(workdir: Path, tag: str) -> ImageRef:
    """The clean image plus vulnerable lodash and minimist: two critical vulnerabilities."""
    return ocikit.image(
        workdir,
        tag,
        [debian_layer(OPENSSL_PACKAGES), python_layer("lark"), npm_layer(VULNERABLE_NPM)],
    )


def gpl3_image(workdir: Path, tag: str) -> ImageRef:
    """No openssl; grep and libicu72, whose copyright carries GPL-3.0-only."""
    return ocikit.image(workdir, tag, [debian_layer(GPL3_PACKAGES)])


def cosign_signature(workdir: Path, subject_digest: str) -> ImageRef:
    """A cosign-style signature artifact tagged sha256-<hex>.sig (simple-signing payload)."""
    payload = json.dumps({
        "critical": {"identity": {"docker-reference": "dev/website"},
                     "image": {"docker-manifest-digest": subject_digest},
                     "type": "cosign container image signature"},
        "optional": None,
    }).encode()
    tag = subject_digest.replace(":", "-") + ".sig"
    layout = OciLayout(workdir / f"layout-sig-{subject_digest[7:19]}")
    layer_desc = layout.add_blob(payload, "application/vnd.dev.cosign.simplesigning.v1+json")
    cfg = layout.add_blob(json.dumps({"architecture": "", "os": "", "rootfs": {
        "type": "layers", "diff_ids": [layer_desc.digest]}}).encode(), OCI_CONFIG)
    doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cfg.as_dict(),
           "layers": [layer_desc.as_dict(annotations={
               "dev.cosignproject.cosign/signature": "MEUCIQDexample"})]}
    raw = json.dumps(doc).encode()
    mdesc = layout.add_blob(raw, OCI_MANIFEST)
    layout.tag(tag, mdesc)
    return ImageRef(layout.path, tag, mdesc.digest, OCI_MANIFEST, raw,
                    source=f"oci:{layout.path}:{tag}")


def sbom_attestation(workdir: Path, subject_digest: str) -> ImageRef:
    """A cosign attestation (sha256-<hex>.att) whose CycloneDX SBOM names requests 2.30.0."""
    bom = {"bomFormat": "CycloneDX", "specVersion": "1.5", "components": [
        {"type": "library", "name": "requests", "version": "2.30.0",
         "purl": "pkg:pypi/requests@2.30.0", "licenses": [{"license": {"id": "Apache-2.0"}}]}]}
    return ocikit.attestation(workdir, subject_digest, "https://cyclonedx.org/bom", bom)
