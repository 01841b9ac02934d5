"""Scale-out: jobs/s and MiB/s of 1, 2 and 4 transfer workers on one PostgreSQL job table.

    .venv/bin/python bench/workers.py [--images 96] [--layer-kib 1024] [--workers 1,2,4] \
        [--max-jobs 2] [--rate-mib 20] [--latency-ms 100] [--no-control]

One source registry holds IMAGES images (a config and two layers of LAYER-KIB each, all their
own blobs). Every run gets a fresh PostgreSQL database, a fresh destination registry and N
`python -m transfer_service` processes (--max-jobs 2 each, so one worker's job slots are the
bottleneck, as they are for a real fleet), then IMAGES StartTransfer calls at once (to the
first worker: any worker may claim any job); the time is from the first call to the last job
done. Both registries are reached through a WAN proxy that delays every request by LATENCY-MS
and paces each body, up and down, at RATE-MIB per connection, so the work is network-bound
as across a WAN, not bound by this machine's CPUs. Prints each run and the ratio of 4
workers to 1 (target >= 3.2).

Then a control: one worker with as many job slots as the largest fleet (--max-jobs 2 x 4),
the same concurrency in one process. The registries and the WAN proxies run on this machine
too (about 0.1 CPU-second per job, where a real WAN's remote registries cost the workers'
machine nothing): when the fleet gets no further than that one worker, this machine's CPUs,
not the scale-out, bound the run (the latency is too short to make it network-bound here).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
import psycopg  # noqa: E402
from aiohttp import web  # noqa: E402
from cryptography.fernet import Fernet  # noqa: E402
from mirror.v1 import common_pb2, transfer_pb2, transfer_pb2_grpc  # noqa: E402

from registry_testkit.images import OCI_MANIFEST, ImageBuilder, ImageRef, push  # noqa: E402
from registry_testkit.ports import free_port  # noqa: E402
from registry_testkit.postgres import PostgresServer, postgres_server  # noqa: E402
from registry_testkit.proxyserver import ThreadedProxyServer, forwardable, relayed_response  # noqa: E402
from registry_testkit.registry import RegistryOptions, RegistryProcess, start_registry  # noqa: E402
from stack.cluster import Cluster  # noqa: E402

MiB = 1 << 20
CHUNK = 64 << 10


@dataclass
class WanProxy(ThreadedProxyServer):
    """`upstream` as if across a WAN: each request waits `latency_s` (one round trip) before
    it is forwarded, and each request and response body flows at `bytes_per_second` (every
    request on its own pace: a connection carries one request at a time)."""

    upstream: str
    bytes_per_second: float
    latency_s: float
    port: int = field(default_factory=free_port)
    requests: int = 0

    def __post_init__(self) -> None:
        self._init_server()

    async def _paced(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        t0, sent = time.monotonic(), 0
        async for chunk in chunks:
            for i in range(0, len(chunk), CHUNK):
                part = chunk[i : i + CHUNK]
                sent += len(part)
                yield part
                await asyncio.sleep(max(0.0, t0 + sent / self.bytes_per_second - time.monotonic()))

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        await asyncio.sleep(self.latency_s)
        headers = forwardable(request.headers)
        headers["Host"] = request.host  # the registry builds Location URLs from it
        has_body = request.body_exists and request.method not in ("GET", "HEAD")
        if not has_body and request.method in ("POST", "PUT", "PATCH"):
            headers["Content-Length"] = "0"
        assert self._session is not None
        async with self._session.request(
            request.method, self.upstream + request.path_qs, headers=headers,
            data=self._paced(request.content.iter_any()) if has_body else None,
            allow_redirects=False,
        ) as up:
            resp = relayed_response(up)
            await resp.prepare(request)
            async for chunk in self._paced(up.content.iter_any()):
                await resp.write(chunk)
            await resp.write_eof()
            return resp


def _serve_wan(upstream: str, port: int, rate: float, latency: float, conn: Connection) -> None:
    proxy = WanProxy(upstream, rate, latency, port=port).start()
    conn.send("ready")
    conn.recv()  # stop
    proxy.stop()
    conn.send(proxy.requests)


class WanLink:
    """A WanProxy in a process of its own: in the bench's process it would share one
    interpreter lock with the code that drives the run (and the other proxy), and add its
    waits to the latency it is meant to add."""

    def __init__(self, upstream: str, rate: float, latency: float) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._conn, child = mp.Pipe()
        self._proc = mp.get_context("spawn").Process(
            target=_serve_wan, args=(upstream, self.port, rate, latency, child), daemon=True
        )
        self._proc.start()
        if not self._conn.poll(30) or self._conn.recv() != "ready":
            raise RuntimeError("the WAN proxy did not start")
        self.requests = 0

    @property
    def pid(self) -> int:
        return int(self._proc.pid or 0)

    def __enter__(self) -> WanLink:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._conn.send("stop")
        if self._conn.poll(10):
            self.requests = int(self._conn.recv())
        self._proc.join(10)


def populate(src: RegistryProcess, work: Path, images: int, layer: int) -> list[ImageRef]:
    """IMAGES images with blobs of their own, pushed to src/app (tags i000...)."""
    builder = ImageBuilder(work / "img")
    built = [builder.image(f"i{i:03d}", layers=[layer, layer + 1]) for i in range(images)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda img: push(img, src, "src/app"), built))
    return built


def manifest_digest(reg: RegistryProcess, repo: str, tag: str) -> str:
    import hashlib

    req = urllib.request.Request(f"{reg.url}/v2/{repo}/manifests/{tag}",
                                 headers={"Accept": OCI_MANIFEST})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return "sha256:" + hashlib.sha256(resp.read()).hexdigest()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process so far (Linux /proc; 0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_processes(pg: PostgresServer) -> dict[int, float]:
    """The PostgreSQL server's processes (the postmaster and its children: one per
    connection), by pid, with their CPU seconds so far."""
    main = int((pg.folder / "data" / "postmaster.pid").read_text().split()[0])
    out = {main: cpu_seconds(main)}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == main:
            pid = int(stat.parent.name)
            out[pid] = cpu_seconds(pid)
    return out


@dataclass
class Result:
    workers: int
    seconds: float
    jobs: int
    mib: float
    # CPU seconds used during the run by the workers, the registries and the WAN proxies;
    # against seconds x cores, it says whether the machine or the WAN bounds the run.
    cpu_workers: float = 0.0
    cpu_registries: float = 0.0
    cpu_proxies: float = 0.0
    cpu_database: float = 0.0
    # Mean seconds from a job's start to its end, and the jobs each worker ran.
    job_seconds: float = 0.0
    per_worker: dict[str, int] = field(default_factory=dict)

    @property
    def jobs_per_s(self) -> float:
        return self.jobs / self.seconds

    @property
    def mib_per_s(self) -> float:
        return self.mib / self.seconds


def one_run(n: int, args: argparse.Namespace, pg: PostgresServer, src: RegistryProcess,
            built: list[ImageRef], work: Path) -> Result:
    url = pg.create_database()
    run_dir = Path(tempfile.mkdtemp(dir=work, prefix=f"w{n}-"))
    rate, latency = args.rate_mib * MiB, args.latency_ms / 1000
    with (
        start_registry(RegistryOptions(log_level="error"), run_dir / "dst") as dst,
        WanLink(src.url, rate, latency) as src_wan,
        WanLink(dst.url, rate, latency) as dst_wan,
        Cluster(run_dir, env={"MIRROR_SECRET_KEY": Fernet.generate_key().decode()}) as c,
    ):
        workers = [
            c.start(f"transfer-{i}", "transfer_service", "--database", url,
                    "--worker-id", f"w{i}", "--max-jobs", str(args.max_jobs),
                    "--max-jobs-per-endpoint", str(args.max_jobs), "--log-level", "WARNING")
            for i in range(1, n + 1)
        ]
        channel = grpc.insecure_channel(workers[0].address)
        stub = transfer_pb2_grpc.TransferServiceStub(channel)
        # Registry limits high enough never to be what bounds the run (they hold per
        # process, or divided among live workers).
        for name, proxy in (("src", src_wan), ("dst", dst_wan)):
            stub.CreateEndpoint(transfer_pb2.CreateEndpointRequest(endpoint=transfer_pb2.Endpoint(
                name=name, url=proxy.url, max_concurrency=args.endpoint_concurrency)), timeout=30)
        requests = [
            transfer_pb2.StartTransferRequest(
                source=common_pb2.ImageLocation(endpoint="src", repository="src/app",
                                                reference=img.tag),
                destination=transfer_pb2.TransferDestination(
                    endpoint="dst", repository=f"mirror/app{i % 8}", tag=img.tag),
            )
            for i, img in enumerate(built)
        ]
        pids = [w.pid for w in workers]
        assert src.proc is not None and dst.proc is not None
        regs = [src.proc.pid, dst.proc.pid]
        wans = [src_wan.pid, dst_wan.pid]
        cpu0 = [sum(cpu_seconds(p) for p in group) for group in (pids, regs, wans)]
        db0 = server_processes(pg)
        t0 = time.time()
        futures = [stub.StartTransfer.future(r, timeout=60) for r in requests]
        ids = [f.result().id for f in futures]
        # Watched every 0.2 s (a light query); the time is the last job's own end time.
        with psycopg.connect(url, autocommit=True) as conn:
            while True:
                row = conn.execute(
                    "SELECT count(*) FILTER (WHERE state = 'done'),"
                    " count(*) FILTER (WHERE state IN ('error', 'canceled', 'superseded'))"
                    " FROM transfer.jobs").fetchone()
                assert row is not None
                if row[1]:
                    raise SystemExit(f"{row[1]} jobs failed; see {run_dir}/*.log")
                if row[0] == len(ids):
                    break
                time.sleep(0.2)
            cpu = [sum(cpu_seconds(p) for p in group) - before
                   for group, before in zip((pids, regs, wans), cpu0, strict=True)]
            # Backends that ended during the run are missed (the workers' pools keep theirs).
            db_cpu = sum(t - db0.get(pid, 0.0) for pid, t in server_processes(pg).items())
            row = conn.execute("SELECT max(end_time), avg(end_time - start_time)"
                               " FROM transfer.jobs").fetchone()
            assert row is not None
            elapsed, job_s = float(row[0]) - t0, float(row[1])
            per_worker: dict[str, int] = dict(conn.execute(
                "SELECT lease_owner, count(*) FROM transfer.jobs GROUP BY lease_owner ORDER BY 1"
            ).fetchall())
        channel.close()
        for i, img in enumerate(built):
            assert manifest_digest(dst, f"mirror/app{i % 8}", img.tag) == img.digest
        mib = sum(b.size for img in built for b in img.blobs) / MiB
    return Result(n, elapsed, len(built), mib, cpu_workers=cpu[0], cpu_registries=cpu[1],
                  cpu_proxies=cpu[2], cpu_database=db_cpu, job_seconds=job_s,
                  per_worker=per_worker)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--layer-kib", type=int, default=1024, help="size of each of two layers")
    ap.add_argument("--workers", default="1,2,4", help="comma-separated worker counts")
    ap.add_argument("--max-jobs", type=int, default=2, help="each worker's --max-jobs")
    ap.add_argument("--endpoint-concurrency", type=int, default=64,
                    help="the endpoints' max_concurrency")
    ap.add_argument("--rate-mib", type=float, default=20.0, help="MiB/s per connection")
    ap.add_argument("--latency-ms", type=float, default=100.0,
                    help="added to every request (a round trip across regions)")
    ap.add_argument("--no-control", action="store_true",
                    help="skip the run of one worker with the largest fleet's job slots")
    ap.add_argument("--runs", type=int, default=1, help="runs per worker count (best kept)")
    args = ap.parse_args(argv)
    counts = [int(x) for x in args.workers.split(",") if x.strip()]
    work = Path(tempfile.mkdtemp(prefix="bench-workers-"))
    with postgres_server() as pg, start_registry(RegistryOptions(log_level="error"),
                                                     work / "src") as src:
        built = populate(src, work, args.images, args.layer_kib << 10)
        print(f"{args.images} images, 2 x {args.layer_kib} KiB layers each; every worker "
              f"--max-jobs {args.max_jobs}; WAN proxy {args.rate_mib:g} MiB/s per connection, "
              f"{args.latency_ms:g} ms per request, on both registries", flush=True)
        results: dict[int, Result] = {}
        for n in counts:
            for _ in range(args.runs):
                r = one_run(n, args, pg, src, built, work)
                report(f"{n} worker(s)", r)
                if n not in results or r.seconds < results[n].seconds:
                    results[n] = r
        control = None
        if not args.no_control and max(counts) > 1:
            slots = args.max_jobs * max(counts)
            control = one_run(1, argparse.Namespace(**{**vars(args), "max_jobs": slots}),
                              pg, src, built, work)
            report(f"1 worker, --max-jobs {slots}", control)
    if 1 in results and max(results) > 1:
        top = max(results)
        ratio = results[top].jobs_per_s / results[1].jobs_per_s
        target = " (target >= 3.2)" if top == 4 else ""
        print(f"{top} workers vs 1: {ratio:.2f}x{target}")
        if control is not None:
            print(f"{top} workers vs 1 worker with their {args.max_jobs * top} job slots: "
                  f"{results[top].jobs_per_s / control.jobs_per_s:.2f}x")
    return 0


def report(label: str, r: Result) -> None:
    print(f"  {label}: {r.seconds:6.2f} s  {r.jobs_per_s:6.2f} jobs/s  {r.mib_per_s:7.2f} MiB/s"
          f"   CPU s: workers {r.cpu_workers:4.1f} registries {r.cpu_registries:4.1f} "
          f"proxies {r.cpu_proxies:4.1f} database {r.cpu_database:4.1f}; a job "
          f"{r.job_seconds:.2f} s; jobs per worker {sorted(r.per_worker.values())}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
