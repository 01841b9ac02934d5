"""Benchmark: our copy engine (in-process) against `skopeo copy --all --preserve-digests`.

Each timed run of either tool gets a fresh destination registry (skopeo caches blob locations
and mounts; so does our engine, in memory). Tools alternate which goes first; the table shows
the median of --runs runs. Also: the raw upload time of the big layer with curl (a monolithic
PUT of the same bytes: the registry's own write limit), timed in turn with case (a), and the
peak RSS of our copier for one big blob.

    .venv/bin/python bench/transfer.py                 # full sizes, several minutes
    .venv/bin/python bench/transfer.py --quick         # small sizes, smoke run
    .venv/bin/python bench/transfer.py --cases a,c     # re-run some cases (a b c d e rss)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from registry_client import RegistryClient  # noqa: E402
from registry_testkit.images import ImageBuilder, ImageRef, digest_of, push, skopeo_copy  # noqa: E402
from registry_testkit.registry import RegistryOptions, RegistryProcess, start_registry  # noqa: E402
from transfer_service.engine import CopyEngine, CopyRequest  # noqa: E402

MiB = 1 << 20


@dataclass
class Case:
    name: str
    image: ImageRef
    repo: str
    target: float  # ours/skopeo at most this
    prep: bool = False  # copy once untimed first (same tool, same destination)
    second_repo: bool = False  # timed copy goes to another repo of the destination
    with_curl: bool = False  # also time a curl PUT of the (only) layer, in turn with the tools


async def _ours_async(
    spool: Path, src: RegistryProcess, dst: RegistryProcess, case: Case, dst_repo: str
) -> float:
    """Prep copy (untimed) and the timed copy in one event loop and one engine."""
    engine = CopyEngine(spool)
    async with RegistryClient(src.client_config()) as s, RegistryClient(dst.client_config()) as d:

        async def copy(to_repo: str) -> None:
            r = await engine.copy(
                CopyRequest(
                    src=s,
                    src_repo=case.repo,
                    src_ref="bench",
                    dst=d,
                    dst_repo=to_repo,
                    dst_tag="bench",
                )
            )
            assert r.digest == case.image.digest

        if case.prep:
            await copy(case.repo)
        t0 = time.perf_counter()
        await copy(dst_repo)
        return time.perf_counter() - t0


def settle() -> None:
    """Flush dirty pages (image building, earlier runs) so their writeback does not land
    inside the next timed run."""
    os.sync()


def run_once(tool: str, case: Case, src: RegistryProcess, work: Path) -> float:
    """One timed copy into a fresh destination registry; returns seconds."""
    opts = RegistryOptions(log_level="error")
    settle()
    with start_registry(opts, Path(tempfile.mkdtemp(dir=work, prefix="dst-"))) as dst:
        spool = Path(tempfile.mkdtemp(dir=work, prefix="spool-"))
        dst_repo = case.repo + ("-second" if case.second_repo else "")
        if tool == "ours":
            elapsed = asyncio.run(_ours_async(spool, src, dst, case, dst_repo))
        else:
            if case.prep:
                skopeo_copy(src, f"{case.repo}:bench", dst, f"{case.repo}:bench")
            t0 = time.perf_counter()
            skopeo_copy(src, f"{case.repo}:bench", dst, f"{dst_repo}:bench")
            elapsed = time.perf_counter() - t0
        # The result must be byte-identical, or the timing means nothing.
        assert digest_of(dst, dst_repo, "bench") == case.image.digest
        shutil.rmtree(spool, ignore_errors=True)
        shutil.rmtree(dst.workdir, ignore_errors=True)
    return elapsed


def curl_upload_seconds(path: Path, digest: str, work: Path) -> float:
    """PUT the blob monolithically with curl into a fresh registry (its write limit)."""
    with start_registry(RegistryOptions(log_level="error"), Path(tempfile.mkdtemp(dir=work))) as r:
        out = subprocess.run(
            [
                "curl",
                "-sS",
                "-X",
                "POST",
                "-D",
                "-",
                "-o",
                "/dev/null",
                f"{r.url}/v2/raw/blobs/uploads/",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        loc = next(
            ln.split(":", 1)[1].strip()
            for ln in out.splitlines()
            if ln.lower().startswith("location:")
        )
        url = loc + ("&" if "?" in loc else "?") + f"digest={digest}"
        settle()
        t0 = time.perf_counter()
        subprocess.run(
            [
                "curl",
                "-sS",
                "-f",
                "-X",
                "PUT",
                "-H",
                "Content-Type: application/octet-stream",
                "-T",
                str(path),
                url,
                "-o",
                "/dev/null",
            ],
            check=True,
        )
        elapsed = time.perf_counter() - t0
        shutil.rmtree(r.workdir, ignore_errors=True)
    return elapsed


_RSS_CHILD = textwrap.dedent("""
    import asyncio, resource, sys
    sys.path.insert(0, sys.argv[5])
    from registry_client import RegistryClient, RegistryConfig
    from transfer_service.engine import CopyEngine, CopyRequest

    async def main(src, dst, repo, spool):
        engine = CopyEngine(spool)
        async with RegistryClient(RegistryConfig(url=src)) as s, \\
                RegistryClient(RegistryConfig(url=dst)) as d:
            await engine.copy(CopyRequest(src=s, src_repo=repo, src_ref="bench", dst=d,
                                          dst_repo=repo, dst_tag="bench"))
    asyncio.run(main(*sys.argv[1:5]))
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
""")


def peak_rss_mib(src: RegistryProcess, repo: str, work: Path) -> float:
    with start_registry(RegistryOptions(log_level="error"), Path(tempfile.mkdtemp(dir=work))) as d:
        spool = Path(tempfile.mkdtemp(dir=work, prefix="spool-"))
        out = subprocess.run(
            [sys.executable, "-c", _RSS_CHILD, src.url, d.url, repo, str(spool), str(ROOT)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        shutil.rmtree(d.workdir, ignore_errors=True)
        shutil.rmtree(spool, ignore_errors=True)
    return int(out.strip().splitlines()[-1]) / 1024


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    ap.add_argument("--runs", type=int, default=3, help="timed runs per tool and case (>= 1)")
    ap.add_argument("--workdir", default=None, help="where registries and images live")
    ap.add_argument(
        "--cases", default="a,b,c,d,e,rss", help="comma-separated subset of a,b,c,d,e,rss"
    )
    args = ap.parse_args(argv)
    wanted = {c.strip() for c in args.cases.split(",") if c.strip()}
    unknown = wanted - {"a", "b", "c", "d", "e", "rss"}
    if unknown:
        ap.error(f"unknown cases: {', '.join(sorted(unknown))}")
    q = args.quick
    sizes = {
        "big": (32 if q else 512) * MiB,
        "many": (8, 1 * MiB) if q else (32, 8 * MiB),
        "index_layer": (256 << 10) if q else 4 * MiB,
        "rss": (256 if q else 2048) * MiB,
    }
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-transfer-"))
    work.mkdir(parents=True, exist_ok=True)
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    rows = []
    curl_row: tuple[float, float] | None = None  # (curl seconds, our seconds) for case (a)
    rss: float | None = None
    with ExitStack() as stack:
        src = stack.enter_context(start_registry(RegistryOptions(log_level="error"), work / "src"))
        builder = ImageBuilder(work / "images")
        log("building and pushing source images ...")
        n, each = sizes["many"]
        cases = []
        if "a" in wanted:
            big = builder.image("bench", layers=[sizes["big"]])
            push(big, src, "bench/big")
            name = f"(a) 1 layer of {sizes['big'] // MiB} MiB"
            cases.append(Case(name, big, "bench/big", 1.0, with_curl=True))
        if wanted & {"b", "d", "e"}:
            many = builder.image("bench", layers=[each] * n)
            push(many, src, "bench/many")
            if "b" in wanted:
                cases.append(Case(f"(b) {n} layers of {each // MiB} MiB", many, "bench/many", 0.8))
        if "c" in wanted:
            index = builder.index(
                "bench",
                platforms=["linux/amd64", "linux/arm64/v8", "linux/arm/v7", "linux/s390x"],
                layers=[sizes["index_layer"]] * 8,
            )
            push(index, src, "bench/index")
            cases.append(
                Case(
                    f"(c) 4-platform index, 8 x {sizes['index_layer'] / MiB:g} MiB layers each",
                    index,
                    "bench/index",
                    0.8,
                )
            )
        if "d" in wanted:
            cases.append(Case("(d) (b) again, all present", many, "bench/many", 0.5, prep=True))
        if "e" in wanted:
            cases.append(
                Case(
                    "(e) (b) into a 2nd repo (mount)",
                    many,
                    "bench/many",
                    0.5,
                    prep=True,
                    second_repo=True,
                )
            )
        for case in cases:
            tools = ["ours", "skopeo"] + (["curl"] if case.with_curl else [])
            times: dict[str, list[float]] = {t: [] for t in tools}
            for i in range(max(1, args.runs)):
                for tool in tools if i % 2 == 0 else tools[::-1]:
                    if tool == "curl":
                        layer = case.image.blobs[-1]
                        layer_path = (
                            case.image.layout / "blobs" / "sha256" / layer.digest.split(":")[1]
                        )
                        times[tool].append(curl_upload_seconds(layer_path, layer.digest, work))
                    else:
                        times[tool].append(run_once(tool, case, src, work))
            med = {t: statistics.median(v) for t, v in times.items()}
            runs = " ".join(f"{t} {[round(x, 2) for x in v]}" for t, v in times.items())
            log(f"{case.name}: {runs}")
            ours, sko = med["ours"], med["skopeo"]
            rows.append((case.name, ours, sko, ours / sko if sko else float("nan"), case.target))
            if case.with_curl:
                curl_row = (med["curl"], ours)
        if "rss" in wanted:
            log(f"building a {sizes['rss'] // MiB} MiB blob for the RSS measurement ...")
            huge = builder.image("bench", layers=[sizes["rss"]])
            push(huge, src, "bench/huge")
            shutil.rmtree(huge.layout, ignore_errors=True)
            rss = peak_rss_mib(src, "bench/huge", work)

    print(
        f"\nruns per tool and case: {args.runs} (median), in-process engine, "
        f"fresh destination registry per timed run{' (--quick sizes)' if q else ''}\n"
    )
    print("| case | ours (s) | skopeo (s) | ours/skopeo | target | met |")
    print("|---|---:|---:|---:|---|---|")
    for name, ours, sko, ratio, target in rows:
        met = "yes" if ratio <= target else "**no**"
        print(f"| {name} | {ours:.2f} | {sko:.2f} | {ratio:.2f} | <= {target:g} | {met} |")
    if curl_row is not None:
        curl, ours = curl_row
        share = curl / ours if ours else float("nan")
        met = "yes" if share >= 0.8 else "**no**"
        print(
            f"| (a) vs raw upload: curl PUT of the same layer | {ours:.2f} | curl {curl:.2f} | "
            f"{share:.0%} of raw throughput | >= 80% | {met} |"
        )
    if rss is not None:
        met = "yes" if rss <= 150 else "**no**"
        print(
            f"| peak RSS of our copier, one {sizes['rss'] // MiB} MiB blob | {rss:.0f} MiB | | | "
            f"<= 150 MiB | {met} |"
        )
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
