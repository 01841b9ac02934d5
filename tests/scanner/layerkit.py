"""Builds layer tar streams (files, symlinks, whiteouts) and realistic package metadata."""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import zstandard

from scanner.parsers.dpkg import paragraphs

SITE_PACKAGES = Path(__file__).resolve().parents[2] / ".venv/lib/python3.11/site-packages"


@dataclass(frozen=True)
class Link:
    target: str


def tar_bytes(entries: Mapping[str, bytes | Link | None]) -> bytes:
    """A tar with regular files (bytes), symlinks (Link) and directories (None)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, value in entries.items():
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            if value is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tf.addfile(info)
            elif isinstance(value, Link):
                info.type = tarfile.SYMTYPE
                info.linkname = value.target
                tf.addfile(info)
            else:
                info.size = len(value)
                info.mode = 0o644
                tf.addfile(info, io.BytesIO(value))
    return buf.getvalue()


def compress(data: bytes, kind: str) -> bytes:
    if kind == "gzip":
        return gzip.compress(data, mtime=0)
    if kind == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    return data


def layer(entries: Mapping[str, bytes | Link | None], kind: str = "gzip") -> bytes:
    return compress(tar_bytes(entries), kind)


def whiteout(path: str) -> str:
    d, _, base = path.rstrip("/").rpartition("/")
    return f"{d}/.wh.{base}" if d else f".wh.{base}"


# ---- Debian: real entries from this machine -------------------------------------------------

def machine_dpkg(count: int = 20) -> tuple[list[str], dict[str, str], dict[str, bytes]]:
    """`count` installed packages with their own DEP-5 copyright file.

    Returns (names, raw status paragraphs by name, copyright bytes by name).
    """
    text = Path("/var/lib/dpkg/status").read_text(encoding="utf-8")
    raw_paras = [p for p in text.split("\n\n") if p.strip()]
    by_name: dict[str, str] = {}
    for raw in raw_paras:
        fields = next(paragraphs(raw))
        if fields.get("Status", "").endswith(" installed") and ":" not in fields["Package"]:
            by_name.setdefault(fields["Package"], raw.strip("\n") + "\n")
    names: list[str] = []
    copyrights: dict[str, bytes] = {}
    for name in sorted(by_name):
        doc = Path("/usr/share/doc") / name
        cp = doc / "copyright"
        if doc.is_symlink() or not cp.is_file():
            continue
        data = cp.read_bytes()
        if not data.startswith(b"Format:") or len(data) > 64 << 10:
            continue
        names.append(name)
        copyrights[name] = data
        if len(names) == count:
            break
    return names, {n: by_name[n] for n in names}, copyrights


def dpkg_query(names: list[str]) -> set[tuple[str, str]]:
    out = subprocess.run(
        ["dpkg-query", "-W", "-f=${Package} ${Version}\n", *names],
        check=True, capture_output=True, text=True,
    ).stdout
    return {tuple(line.split(" ", 1)) for line in out.splitlines()}  # type: ignore[misc]


def os_release() -> bytes:
    return Path("/etc/os-release").read_bytes()


# ---- Alpine -----------------------------------------------------------------------------------

ALPINE_INSTALLED = """\
C:Q1fWQpcEArHPOMKbl0QK6h1xBqSaQ=
P:musl
V:1.2.4_git20230717-r4
A:x86_64
S:407929
I:667648
T:the musl c library (libc) implementation
U:https://musl.libc.org/
L:MIT
o:musl
m:Timo Teras <timo.teras@iki.fi>
t:1705337113
c:b9a2e9e3fe6d1e5e1f4e0d1d1b6e3c4e3a2c0b1d
F:lib
R:ld-musl-x86_64.so.1
a:0:0:755
Z:Q1Cf0t8Q5bcM0a6sPUkeDWpOqYQV4=
R:libc.musl-x86_64.so.1

P:busybox
V:1.36.1-r15
A:x86_64
S:506498
I:963232
T:Size optimized toolbox of many common UNIX utilities
U:https://busybox.net/
L:GPL-2.0-only
o:busybox
m:Sören Tempel <soeren+alpine@soeren-tempel.net>
t:1705337113
D:so:libc.musl-x86_64.so.1
F:bin
R:busybox

P:libcrypto3
V:3.1.4-r5
A:x86_64
S:1735484
I:4374504
T:Crypto library from openssl
U:https://www.openssl.org/
L:Apache-2.0
o:openssl
m:Ariadne Conill <ariadne@dereferenced.org>
t:1706803012

P:zlib
V:1.3.1-r0
A:x86_64
S:53595
I:104016
T:A compression/decompression Library
U:https://zlib.net/
L:Zlib
o:zlib
m:Natanael Copa <ncopa@alpinelinux.org>
t:1706015009

P:ca-certificates-bundle
V:20240226-r0
A:x86_64
L:MPL-2.0 AND MIT
o:ca-certificates
""".encode()

ALPINE_OS_RELEASE = b"""NAME="Alpine Linux"
ID=alpine
VERSION_ID=3.19.1
PRETTY_NAME="Alpine Linux v3.19"
HOME_URL="https://alpinelinux.org/"
"""


# ---- Python dist-info copied from the venv -----------------------------------------------------

def dist_info(project: str) -> tuple[str, bytes]:
    """(folder name, METADATA bytes) of an installed distribution in the project venv."""
    norm = project.replace("-", "_").lower()
    for d in sorted(os.listdir(SITE_PACKAGES)):
        if d.endswith(".dist-info") and d.lower().startswith(norm + "-"):
            return d, (SITE_PACKAGES / d / "METADATA").read_bytes()
    raise LookupError(project)


# ---- npm ---------------------------------------------------------------------------------------

def package_json(name: str, version: str, **extra: object) -> bytes:
    return json.dumps({"name": name, "version": version, **extra}).encode()
