"""Scanner benchmarks.

1. Import of 50,000 synthetic OSV records (same schema as osv.dev exports, as a zip).
2. ScanImage of a 500-package Debian image (status DB of this machine's packages plus
   synthetic ones, with copyright files), pushed with skopeo to a real docker-registry and
   scanned through the gRPC ScanService against the 50,000-record database. The same layer is
   also scanned from a local stream (no registry) for comparison.

    .venv/bin/python bench/scan.py [--records 50000] [--packages 500] [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import random
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "clients")]

from grpc import aio  # noqa: E402
from mirror.v1 import common_pb2, scan_pb2, scan_pb2_grpc  # noqa: E402

from registry_client import RegistryClient, RegistryConfig  # noqa: E402
from registry_testkit.images import push  # noqa: E402
from registry_testkit.registry import start_registry  # noqa: E402
from scanner import parsers  # noqa: E402
from scanner.layers import LayerReader  # noqa: E402
from scanner.servicer import ScanServicer  # noqa: E402
from scanner.store import open_database  # noqa: E402
from scanner.vulndb import VulnDB, iter_path  # noqa: E402
from servicekit.server import start_server  # noqa: E402
from tests.scanner import ocikit  # noqa: E402
from tests.scanner.layerkit import Link, layer, os_release  # noqa: E402

COPYRIGHT = (
    b"Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n"
    b"Files: *\nCopyright: 2024 Example\nLicense: GPL-2+\n\nFiles: lib/*\n"
    b"Copyright: 2024 Example\nLicense: Expat\n"
)


def debian_layer(count: int) -> tuple[bytes, list[tuple[str, str]]]:
    """A gzip layer with a `count`-entry status DB: this machine's packages, then synthetic."""
    from scanner.parsers.dpkg import paragraphs

    text = Path("/var/lib/dpkg/status").read_text(encoding="utf-8")
    files: dict[str, bytes | Link | None] = {
        "usr/lib/os-release": os_release(),
        "etc/os-release": Link("../usr/lib/os-release"),
    }
    paras: list[str] = []
    pkgs: list[tuple[str, str]] = []
    for raw in text.split("\n\n"):
        if not raw.strip() or len(paras) >= count:
            continue
        f = next(paragraphs(raw))
        if not f.get("Status", "").endswith(" installed"):
            continue
        paras.append(raw.strip("\n") + "\n")
        pkgs.append((f["Package"], f["Version"]))
        cp = Path("/usr/share/doc") / f["Package"] / "copyright"
        if cp.is_file():
            files[f"usr/share/doc/{f['Package']}/copyright"] = cp.read_bytes()
    i = 0
    while len(paras) < count:
        i += 1
        name, version = f"synthetic-pkg{i}", f"1.{i}-{i % 7 + 1}"
        paras.append(
            f"Package: {name}\nStatus: install ok installed\nPriority: optional\n"
            f"Architecture: amd64\nVersion: {version}\nDescription: bench\n"
        )
        files[f"usr/share/doc/{name}/copyright"] = COPYRIGHT
        pkgs.append((name, version))
    files["var/lib/dpkg/status"] = "\n".join(paras).encode()
    return layer(files), pkgs


def osv_zip(path: Path, n: int, pkgs: list[tuple[str, str]]) -> None:
    """`n` OSV records over Debian:12 (some naming the image's packages), PyPI and npm."""
    rnd = random.Random(7)
    vectors = [
        "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H",
        "CVSS:3.1/AV:N/AC:H/PR:H/UI:N/S:U/C:H/I:N/A:N",
        "CVSS:3.1/AV:L/AC:H/PR:H/UI:R/S:U/C:L/I:N/A:N",
    ]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(n):
            kind = i % 3
            if kind == 0:
                name = pkgs[rnd.randrange(len(pkgs))][0] if rnd.random() < 0.1 else f"deb{i}"
                eco, fixed, rtype = "Debian:12", f"{rnd.randint(0, 3)}.{i}-1", "ECOSYSTEM"
            elif kind == 1:
                eco, name, fixed, rtype = "PyPI", f"py-{i}", f"{rnd.randint(1, 9)}.{i}", "ECOSYSTEM"
            else:
                eco, name, fixed, rtype = "npm", f"js-{i}", f"{rnd.randint(1, 9)}.0.{i}", "SEMVER"
            rec = {
                "schema_version": "1.6.0",
                "id": f"BENCH-{i:06d}",
                "modified": "2024-06-01T00:00:00Z",
                "published": "2024-01-01T00:00:00Z",
                "aliases": [f"CVE-2024-{i:06d}"],
                "summary": f"synthetic advisory {i}",
                "affected": [
                    {
                        "package": {"ecosystem": eco, "name": name},
                        "ranges": [
                            {"type": rtype, "events": [{"introduced": "0"}, {"fixed": fixed}]}
                        ],
                    }
                ],
            }
            if i % 2 == 0:
                rec["severity"] = [{"type": "CVSS_V3", "score": vectors[(i // 6) % 3]}]
            zf.writestr(f"{eco.split(':')[0]}/BENCH-{i:06d}.json", json.dumps(rec))


def scan_local(blob: bytes) -> float:
    t = time.perf_counter()
    r = LayerReader(parsers.SELECTOR)
    r.read_layer(io.BytesIO(blob))
    parsers.extract(r.tree)
    return time.perf_counter() - t


class Resolver:
    def __init__(self, url: str) -> None:
        self.url = url

    def client_for(self, name: str) -> RegistryClient:
        return RegistryClient(RegistryConfig(url=self.url))


async def scan_via_registry(work: Path, blob: bytes, data: Path, runs: int) -> list[float]:
    ref = ocikit.image(work, "bench", [blob])
    times: list[float] = []
    with start_registry(workdir=work / "registry") as reg:
        push(ref, reg, "bench/debian")
        servicer = ScanServicer(data, Resolver(reg.url))
        running = await start_server([servicer], "127.0.0.1:0")
        try:
            async with aio.insecure_channel(f"127.0.0.1:{running.port}") as ch:
                stub = scan_pb2_grpc.ScanServiceStub(ch)
                loc = common_pb2.ImageLocation(
                    endpoint="r", repository="bench/debian", reference="bench"
                )
                for _ in range(runs):
                    t = time.perf_counter()
                    rep = await stub.ScanImage(scan_pb2.ScanImageRequest(image=loc, force=True))
                    times.append(time.perf_counter() - t)
                print(
                    f"  report: {len(rep.components)} components, counts "
                    f"critical={rep.counts.critical} major={rep.counts.major} "
                    f"minor={rep.counts.minor} all={rep.counts.all}"
                )
        finally:
            await running.stop(0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=50_000)
    ap.add_argument("--packages", type=int, default=500)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        blob, pkgs = debian_layer(args.packages)
        print(f"Debian layer: {len(pkgs)} packages, {len(blob)} bytes gzip")
        zpath = work / "osv.zip"
        osv_zip(zpath, args.records, pkgs)
        db = VulnDB(open_database(work / "data"))
        t = time.perf_counter()
        res = db.import_sources(iter_path(zpath))
        imp = time.perf_counter() - t
        print(
            f"import {args.records} OSV records (zip {zpath.stat().st_size} bytes): {imp:.2f} s "
            f"(imported={res.imported} errors={len(res.errors)})"
        )
        t = time.perf_counter()
        res2 = db.import_sources(iter_path(zpath))
        print(f"re-import (all unchanged, skipped={res2.skipped}): {time.perf_counter() - t:.2f} s")
        db.db.close()
        local = [scan_local(blob) for _ in range(args.runs)]
        print(
            f"local layer read+parse, {len(pkgs)} packages: median {statistics.median(local):.3f} s"
        )
        remote = asyncio.run(scan_via_registry(work, blob, work / "data", args.runs))
        print(
            f"ScanImage via gRPC + docker-registry, {len(pkgs)} packages, 50k-record DB: "
            f"median {statistics.median(remote):.3f} s, max {max(remote):.3f} s "
            f"({args.runs} runs, force=true)"
        )


if __name__ == "__main__":
    main()
