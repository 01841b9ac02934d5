"""Package databases in test images built from real metadata: dpkg, apk, Python, npm, OS."""

from __future__ import annotations

import io
import random

import pytest
from license_expression import get_spdx_licensing

from scanner import parsers
from scanner.layers import LayerReader
from scanner.model import Component
from tests.scanner.layerkit import (
    ALPINE_INSTALLED,
    ALPINE_OS_RELEASE,
    Link,
    dist_info,
    dpkg_query,
    layer,
    machine_dpkg,
    os_release,
    package_json,
    whiteout,
)

_KNOWN = {k.lower() for k in get_spdx_licensing().known_symbols}


def scan_layers(*blobs: bytes) -> tuple[object, list[Component]]:
    r = LayerReader(parsers.SELECTOR)
    for b in blobs:
        r.read_layer(io.BytesIO(b))
    return parsers.extract(r.tree)


def _is_spdx(lic: str) -> bool:
    return lic.startswith("LicenseRef-") or lic.lower() in _KNOWN


def debian_layers() -> tuple[list[str], bytes, bytes]:
    names, paras, copyrights = machine_dpkg(20)
    files: dict[str, bytes | Link | None] = {
        "usr/lib/os-release": os_release(),
        "etc/os-release": Link("../usr/lib/os-release"),
        "var/lib/dpkg/status": "\n".join(paras[n] for n in names).encode(),
    }
    for n in names:
        files[f"usr/share/doc/{n}/copyright"] = copyrights[n]
    removed = names[3]
    # dpkg removal in an upper layer: a rewritten status and the doc folder whited out.
    upper = {
        "var/lib/dpkg/status": "\n".join(paras[n] for n in names if n != removed).encode(),
        whiteout(f"usr/share/doc/{removed}"): b"",
    }
    return names, layer(files), layer(upper, "zstd")


def test_dpkg_components_equal_dpkg_query_and_removal_is_gone() -> None:
    names, lower, upper = debian_layers()
    os_info, comps = scan_layers(lower)
    assert {(c.name, c.version) for c in comps} == dpkg_query(names)
    os_info, comps = scan_layers(lower, upper)
    removed = names[3]
    assert {(c.name, c.version) for c in comps} == dpkg_query(
        [n for n in names if n != removed])
    assert os_info.id == "debian" and os_info.version_id  # type: ignore[attr-defined]
    for c in comps:
        assert c.type == "deb"
        assert c.purl.startswith(f"pkg:deb/debian/{c.name}@")
        assert f"distro=debian-{os_info.version_id}" in c.purl  # type: ignore[attr-defined]
        assert c.licenses, f"{c.name} has a DEP-5 copyright, so licenses are expected"
        assert all(_is_spdx(x) for x in c.licenses), c.licenses


def test_dpkg_license_of_known_package() -> None:
    text = b"Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n" \
        b"Files: *\nCopyright: 2020 Someone\nLicense: GPL-2+ or Artistic\n\n" \
        b"Files: lib/*\nCopyright: 2020 Other\nLicense: Expat\n"
    status = b"Package: demo\nStatus: install ok installed\nVersion: 1:2.0-3\n" \
        b"Architecture: amd64\nSource: demo-src (2.0-3)\n"
    _os, comps = scan_layers(
        layer({"var/lib/dpkg/status": status, "usr/share/doc/demo/copyright": text}))
    (c,) = comps
    assert c.licenses == ("GPL-2.0-or-later", "Artistic-1.0", "MIT")
    assert (c.source, c.source_version, c.version) == ("demo-src", "2.0-3", "1:2.0-3")


def test_distroless_status_d_and_deinstalled_entries() -> None:
    files = {
        "var/lib/dpkg/status.d/base": b"Package: base-files\nVersion: 12.4+deb12u5\n"
        b"Architecture: amd64\n",
        "var/lib/dpkg/status.d/base.md5sums": b"abc  etc/issue\n",
        "var/lib/dpkg/status.d/tzdata": b"Package: tzdata\nVersion: 2024a-0+deb12u1\n",
        "var/lib/dpkg/status": b"Package: gone\nStatus: deinstall ok config-files\n"
        b"Version: 1.0\n",
    }
    _os, comps = scan_layers(layer(files))
    assert {(c.name, c.version) for c in comps} == {
        ("base-files", "12.4+deb12u5"), ("tzdata", "2024a-0+deb12u1")}


def test_alpine_installed_db() -> None:
    os_info, comps = scan_layers(layer({
        "etc/os-release": ALPINE_OS_RELEASE, "lib/apk/db/installed": ALPINE_INSTALLED}))
    got = {c.name: c for c in comps}
    assert set(got) == {"musl", "busybox", "libcrypto3", "zlib", "ca-certificates-bundle"}
    assert got["libcrypto3"].version == "3.1.4-r5"
    assert got["libcrypto3"].source == "openssl"
    assert got["busybox"].licenses == ("GPL-2.0-only",)
    assert got["ca-certificates-bundle"].licenses == ("MPL-2.0", "MIT")
    assert got["zlib"].purl == "pkg:apk/alpine/zlib@1.3.1-r0?arch=x86_64&distro=3.19.1"
    assert os_info.id == "alpine"  # type: ignore[attr-defined]


def test_python_dist_info_from_the_venv_and_whiteout_of_one() -> None:
    site = "usr/local/lib/python3.11/site-packages"
    files: dict[str, bytes | Link | None] = {}
    expected = {}
    for project in ("aiohttp", "cvss", "lark", "packageurl-python", "univers"):
        folder, meta = dist_info(project)
        files[f"{site}/{folder}/METADATA"] = meta
        expected[folder.split("-")[0]] = folder
    removed_folder = expected.pop("lark")
    upper = {f"{site}/.wh.{removed_folder}": b""}
    _os, comps = scan_layers(layer(files), layer(upper))
    got = {c.name.replace("-", "_").lower(): c for c in comps}
    assert set(got) == {k.replace("-", "_").lower() for k in expected}
    for c in comps:
        assert c.type == "pypi" and c.purl.startswith("pkg:pypi/")
        assert c.licenses and all(_is_spdx(x) for x in c.licenses), (c.name, c.licenses)
    assert got["cvss"].licenses == ("LGPL-3.0-or-later",)
    assert got["aiohttp"].licenses == ("Apache-2.0", "MIT")
    assert got["univers"].licenses == ("Apache-2.0", "BSD-3-Clause", "MIT")


def test_python_license_fields_priority() -> None:
    meta = (b"Metadata-Version: 2.1\nName: Demo_Pkg\nVersion: 1.0rc1\n"
            b"License: MIT License\nClassifier: License :: OSI Approved :: MIT License\n\nbody\n")
    expr = (b"Metadata-Version: 2.4\nName: other\nVersion: 2\n"
            b"License-Expression: Apache-2.0 OR BSD-3-Clause\n")
    classifier = (b"Metadata-Version: 2.1\nName: third\nVersion: 3\n"
                  b"License: Copyright (c) long text\n that goes on\n"
                  b"Classifier: License :: OSI Approved :: Apache Software License\n")
    _os, comps = scan_layers(layer({
        "app/demo_pkg-1.0rc1.dist-info/METADATA": meta,
        "app/other-2.dist-info/METADATA": expr,
        "app/third-3.dist-info/METADATA": classifier,
    }))
    got = {c.name: c for c in comps}
    assert got["Demo_Pkg"].licenses == ("MIT",)
    assert got["Demo_Pkg"].purl == "pkg:pypi/demo-pkg@1.0rc1"
    assert got["other"].licenses == ("Apache-2.0", "BSD-3-Clause")
    assert got["third"].licenses == ("Apache-2.0",)


def test_npm_packages_scoped_legacy_and_nested() -> None:
    nm = "usr/src/app/node_modules"
    files: dict[str, bytes | Link | None] = {
        f"{nm}/lodash/package.json": package_json("lodash", "4.17.20", license="MIT"),
        f"{nm}/@babel/core/package.json": package_json("@babel/core", "7.23.0", license="MIT"),
        f"{nm}/old/package.json": package_json(
            "old", "0.1.0", licenses=[{"type": "MIT"}, {"type": "Apache 2.0"}]),
        f"{nm}/typed/package.json": package_json("typed", "1.0.0", license={"type": "ISC"}),
        f"{nm}/lodash/node_modules/minimist/package.json": package_json(
            "minimist", "1.2.5", license="MIT"),
        # not a package root: a file inside a package
        f"{nm}/lodash/fp/package.json": package_json("lodash-fp-internal", "0.0.0"),
        f"{nm}/broken/package.json": b"{not json",
    }
    _os, comps = scan_layers(layer(files))
    got = {c.name: c for c in comps}
    assert set(got) == {"lodash", "@babel/core", "old", "typed", "minimist"}
    assert got["@babel/core"].purl == "pkg:npm/%40babel/core@7.23.0"
    assert got["old"].licenses == ("MIT", "Apache-2.0")
    assert got["typed"].licenses == ("ISC",)


def test_opaque_node_modules_removes_lower_packages() -> None:
    nm = "app/node_modules"
    lower = layer({f"{nm}/a/package.json": package_json("a", "1.0.0"),
                   f"{nm}/b/package.json": package_json("b", "1.0.0")})
    upper = layer({f"{nm}/.wh..wh..opq": b"", f"{nm}/c/package.json": package_json("c", "2.0.0")})
    _os, comps = scan_layers(lower, upper)
    assert [(c.name, c.version) for c in comps] == [("c", "2.0.0")]


def test_os_release_fallback_to_usr_lib() -> None:
    os_info, _ = scan_layers(layer({"usr/lib/os-release": b'ID=ubuntu\nVERSION_ID="22.04"\n'}))
    assert (os_info.id, os_info.version_id) == ("ubuntu", "22.04")  # type: ignore[attr-defined]


def test_iter_lines_is_splitlines_across_block_edges(monkeypatch: pytest.MonkeyPatch) -> None:
    from scanner.parsers import lines

    monkeypatch.setattr(lines, "_BLOCK", 7)  # many block edges in short texts
    rng = random.Random(1)
    for _ in range(3000):
        text = "".join(rng.choice(["a", "b", " ", "\n", "\r", "\r\n", "\n\n", "\x0c"])
                       for _ in range(rng.randint(0, 60)))
        assert list(lines.iter_lines(text)) == text.splitlines(), repr(text)
