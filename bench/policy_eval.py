"""Policy evaluation benchmarks.

Part 1 (`bench_compiled_vs_cel`, the rules work): compiled rules against CEL, in process.
Part 2 (`bench_rpc`): Evaluate RPC throughput and latency with 10,000 policies over 1,000
repositories, from several client processes (each with its own channel) against a
`python -m policy_service` subprocess.

    .venv/bin/python bench/policy_eval.py --part rpc
    .venv/bin/python bench/policy_eval.py --part all
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

REPO_ROOT = Path(__file__).resolve().parents[1]
EVALUATE = "/mirror.v1.PolicyService/Evaluate"

RULES = [
    'tag endswith "stable" and critical_vulns <= 3',
    'tag startswith "v" or tag endswith "-release"',
    'component == "openssl" and major_vulns < 10',
    'not license in ["AGPL-3.0-only", "SSPL-1.0"]',
    'all_vulns == 0 or (tag endswith "stable" and critical_vulns == 0)',
    'label["team"] == "web" and size < 500000000',
    'component startswith "lib" and not component in ["log4j", "struts"]',
    'platform == "linux/arm64" or tag contains "multi"',
    'tag in ["latest", "stable", "lts"]',
    'minor_vulns >= 0 and tag != "dev"',
]


# --- part 1: compiled rules vs cel-python, in process -----------------------------------------

TARGET_RATIO = 20.0


@dataclass(frozen=True)
class EvalRule:
    name: str
    rule: str
    cel: str


EVAL_RULES = [
    EvalRule(
        "seed (tag + vulns)",
        'tag endswith "stable" and critical_vulns <= 3',
        'tag.endsWith("stable") && critical_vulns <= 3',
    ),
    EvalRule(
        "components + licenses",
        'component startswith "b" and license not in ["GPL-3.0-only", "AGPL-3.0-only"]',
        'components.exists(c, c.startsWith("b"))'
        ' && !licenses.exists(l, l in ["GPL-3.0-only", "AGPL-3.0-only"])',
    ),
    EvalRule(
        "regex",
        r'tag matches "^[0-9]+\\.[0-9]+(\\.[0-9]+)?-stable$"',
        r'tag.matches("^[0-9]+\\.[0-9]+(\\.[0-9]+)?-stable$")',
    ),
    EvalRule(
        "bigger and/or tree",
        '(tag endswith "stable" or tag in ["latest", "release"])'
        " and not (critical_vulns > 0 or major_vulns > 10)"
        ' and (repository startswith "dev/" or label["tier"] == "gold")'
        ' and size < 500MiB and platform == "linux/amd64"'
        ' and component != "telnetd"',
        '(tag.endsWith("stable") || tag in ["latest", "release"])'
        " && !(critical_vulns > 0 || major_vulns > 10)"
        ' && (repository.startsWith("dev/") || ("tier" in labels ? labels["tier"] : "") == "gold")'
        ' && size < 524288000 && platforms.exists(p, p == "linux/amd64")'
        ' && !components.exists(c, c == "telnetd")',
    ),
]


def _eval_facts() -> list[Any]:
    """A few images, so that every rule sees both outcomes; about 40 components each."""
    from policy_service.rules import ComponentFact, Facts, VulnCounts

    def components(names: list[str], licenses: list[str]) -> tuple[ComponentFact, ...]:
        return tuple(
            ComponentFact(n, "1.0", "deb", (licenses[i % len(licenses)],))
            for i, n in enumerate(names)
        )

    base = [f"lib{i}" for i in range(36)]
    return [
        Facts(
            "dev/website",
            "1.4-stable",
            "sha256:" + "a" * 64,
            components(["zlib", "bash", *base, "busybox"], ["Zlib", "MIT"]),
            VulnCounts(0, 2, 5, 7),
            {"tier": "gold"},
            ("linux/amd64", "linux/arm64/v8"),
            120 << 20,
        ),
        Facts(
            "dev/website",
            "1.4.2-stable",
            "sha256:" + "b" * 64,
            components(["zlib", "bash", *base], ["GPL-3.0-only", "MIT"]),
            VulnCounts(2, 3, 1, 6),
            {},
            ("linux/amd64",),
            80 << 20,
        ),
        Facts(
            "qa/api",
            "latest",
            "sha256:" + "c" * 64,
            components(["openssl", *base, "telnetd"], ["Apache-2.0"]),
            VulnCounts(5, 12, 0, 17),
            {"tier": "silver"},
            ("linux/arm64",),
            900 << 20,
        ),
        Facts(
            "prod/web",
            "release",
            "sha256:" + "d" * 64,
            (),
            VulnCounts(),
            {"tier": "gold"},
            ("linux/amd64",),
            10 << 20,
        ),
    ]


def _cel_activation(facts: Any) -> dict[str, Any]:
    import celpy

    values = {
        "tag": facts.tag,
        "repository": facts.repository,
        "digest": facts.digest,
        "labels": dict(facts.labels),
        "components": list(facts.component_names),
        "licenses": list(facts.license_names),
        "platforms": list(facts.platforms),
        "critical_vulns": facts.vulns.critical,
        "major_vulns": facts.vulns.major,
        "minor_vulns": facts.vulns.minor,
        "all_vulns": facts.vulns.all,
        "size": facts.size,
    }
    return {name: celpy.json_to_cel(value) for name, value in values.items()}


def _rate(run_once: Callable[[], object], per_round: int, seconds: float) -> float:
    """Evaluations per second of ``run_once``, which does ``per_round`` evaluations."""
    rounds = 0
    start = now = time.perf_counter_ns()
    deadline = start + int(seconds * 1e9)
    while now < deadline or rounds < 3:
        run_once()
        rounds += 1
        now = time.perf_counter_ns()
    return rounds * per_round / ((now - start) / 1e9)


def bench_compiled_vs_cel(seconds: float = 1.0) -> list[dict[str, Any]]:
    """Time each rule with our compiled evaluator and with cel-python on the same facts (after
    checking both give the same results); print a table and return one row per rule."""
    import celpy

    from policy_service.rules import Facts, compile_rule

    facts_list = _eval_facts()
    env = celpy.Environment()
    activations = [_cel_activation(f) for f in facts_list]
    rows = []
    for bench in EVAL_RULES:
        rule = compile_rule(bench.rule)
        program = env.program(env.compile(bench.cel))
        ours = [rule.evaluate(f) for f in facts_list]
        theirs = [bool(program.evaluate(a)) for a in activations]
        if ours != theirs:
            raise SystemExit(f"{bench.name}: results differ, ours {ours}, cel-python {theirs}")
        evaluate = rule.evaluate

        def run_ours(evaluate: Callable[[Any], bool] = evaluate) -> None:
            for facts in facts_list:
                evaluate(facts)

        def run_ours_fresh(evaluate: Callable[[Any], bool] = evaluate) -> None:
            # New Facts each time, so the derived sets (component names...) are rebuilt too.
            for f in facts_list:
                evaluate(
                    Facts(
                        f.repository,
                        f.tag,
                        f.digest,
                        f.components,
                        f.vulns,
                        f.labels,
                        f.platforms,
                        f.size,
                    )
                )

        def run_cel(program: Any = program) -> None:
            for activation in activations:
                program.evaluate(activation)

        n = len(facts_list)
        ours_rate = _rate(run_ours, n, seconds)
        fresh_rate = _rate(run_ours_fresh, n, seconds)
        cel_rate = _rate(run_cel, n, seconds)
        rows.append(
            {
                "rule": bench.name,
                "results": ours,
                "ours_per_s": ours_rate,
                "ours_fresh_per_s": fresh_rate,
                "cel_per_s": cel_rate,
                "ratio": ours_rate / cel_rate,
                "ratio_fresh": fresh_rate / cel_rate,
            }
        )
    _print_eval(rows, len(facts_list))
    return rows


def _print_eval(rows: list[dict[str, Any]], n_facts: int) -> None:
    print(
        f"Compiled rules vs cel-python: {n_facts} images per round, results checked equal "
        "first; 'fresh' builds new Facts for every evaluation"
    )
    header = (
        f"{'rule':22} {'ours eval/s':>12} {'ours ns':>8} {'fresh ns':>9} "
        f"{'cel eval/s':>10} {'cel ns':>10} {'ratio':>7} {'fresh ratio':>11}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['rule']:22} {row['ours_per_s']:12,.0f} {1e9 / row['ours_per_s']:8,.0f} "
            f"{1e9 / row['ours_fresh_per_s']:9,.0f} {row['cel_per_s']:10,.0f} "
            f"{1e9 / row['cel_per_s']:10,.0f} {row['ratio']:6,.0f}x {row['ratio_fresh']:10,.0f}x"
        )
    met = all(min(r["ratio"], r["ratio_fresh"]) >= TARGET_RATIO for r in rows)
    verdict = "met" if met else "NOT met"
    print(f"target ours >= {TARGET_RATIO:.0f}x faster than cel-python: {verdict}")


# --- part 2: Evaluate over gRPC -------------------------------------------------------------


def _repositories(n_repos: int, n_teams: int) -> list[str]:
    return [f"team{i % n_teams:02d}/app{i:04d}" for i in range(n_repos)]


def seed_policies(data: Path, n_policies: int, n_repos: int, n_teams: int = 50) -> int:
    """Write the policies straight into the service's SQLite file (10,000 CreatePolicy RPCs
    would only measure fsync). Each repository gets ~9 exact policies, one glob naming it
    (`team07/app0123*`) and its team's `team07/**`; one policy in 13 is disabled."""
    from policy_service.store import PolicyRecord, PolicyStore

    repos = _repositories(n_repos, n_teams)
    sources = [f"team{t:02d}/**" for t in range(n_teams)]
    n_globs = max(0, min(n_repos, n_policies // 10) - n_teams)
    sources += [f"{r}*" for r in repos[:n_globs]]
    while len(sources) < n_policies:
        sources.append(repos[len(sources) % n_repos])
    now = time.time_ns() // 1000
    records = [
        PolicyRecord(
            id=f"bench{i:06d}",
            name=f"bench-{i:06d}",
            description="",
            source_repository=src,
            source_endpoint="dev",
            rule=RULES[i % len(RULES)],
            target_endpoint="qa",
            target_repository=f"qa/mirror{i % 100}",
            tag_template="%n-%Y%m%d%H%M",
            time_zone="Europe/Paris" if i % 3 == 0 else "",
            enabled=i % 13 != 7,
            create_time_us=now,
            update_time_us=now,
            etag=f"1-{i}",
            version=1,
        )
        for i, src in enumerate(sources[:n_policies])
    ]
    store = PolicyStore.open(data)
    store.insert_many(records)
    store.close()
    return len(records)


def _requests(n_repos: int, n: int, seed: int) -> list[bytes]:
    """Serialized EvaluateRequests for random repositories, built before timing starts."""
    from mirror.v1 import common_pb2, policy_pb2

    rnd = random.Random(seed)
    repos = _repositories(n_repos, 50)
    out = []
    for _ in range(n):
        facts = common_pb2.ImageFacts(
            repository=rnd.choice(repos),
            tag=rnd.choice(["1.4-stable", "v2.0.1", "latest", "dev", "3.1-release", "multi-7"]),
            digest="sha256:" + "ab" * 32,
            components=[
                common_pb2.Component(name=n, version="1.0", type="deb", licenses=[lic])
                for n, lic in [
                    ("openssl", "Apache-2.0"),
                    ("libc6", "LGPL-2.1-only"),
                    ("bash", "GPL-3.0-only"),
                    ("zlib1g", "Zlib"),
                    ("libssl3", "Apache-2.0"),
                ]
            ],
            vulnerabilities=common_pb2.VulnerabilityCounts(
                critical=rnd.randint(0, 5), major=rnd.randint(0, 20), minor=3, all=40
            ),
            labels={"team": rnd.choice(["web", "api"])},
            platforms=["linux/amd64", "linux/arm64"],
            size_bytes=rnd.randint(10, 900) * 1_000_000,
        )
        facts.vulnerability_data_time.GetCurrentTime()  # fresh: rules are evaluated, not blocked
        out.append(policy_pb2.EvaluateRequest(endpoint="dev", facts=facts).SerializeToString())
    return out


def _client(
    address: str,
    n_repos: int,
    concurrency: int,
    warmup: float,
    duration: float,
    seed: int,
    results: mp.Queue,
) -> None:  # type: ignore[type-arg]
    """One client process: `concurrency` requests in flight on its own channel."""
    import grpc
    from grpc import aio
    from mirror.v1 import policy_pb2

    requests = _requests(n_repos, 2000, seed)

    async def run() -> tuple[list[float], int, int]:
        # Returns measured latencies, errors, and all calls (warm-up included).
        async with aio.insecure_channel(address) as channel:
            # Raw bytes both ways: the clients spend their CPU on the calls, not on protobuf.
            call = channel.unary_unary(EVALUATE)
            check = policy_pb2.EvaluateResponse.FromString(await call(requests[0], timeout=10))
            if not check.results:
                raise RuntimeError("Evaluate returned no results: policies not loaded?")
            start = time.perf_counter()
            measure_from = start + warmup
            stop_at = measure_from + duration
            latencies: list[float] = []
            errors = 0
            calls = 1

            async def worker(k: int) -> None:
                nonlocal errors, calls
                i = k
                while True:
                    t0 = time.perf_counter()
                    if t0 >= stop_at:
                        return
                    try:
                        await call(requests[i % len(requests)], timeout=10)
                    except grpc.RpcError:
                        errors += 1
                        continue
                    t1 = time.perf_counter()
                    calls += 1
                    if t0 >= measure_from:
                        latencies.append(t1 - t0)
                    i += concurrency

            await asyncio.gather(*(worker(k) for k in range(concurrency)))
            return latencies, errors, calls

    results.put(asyncio.run(run()))


def _start_server(data: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "policy_service",
            "--grpc-listen",
            "127.0.0.1:0",
            "--data",
            str(data),
            "--log-level",
            "WARNING",
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    m = re.search(r"listening on ([\d.]+:\d+)", line)
    if not m:
        proc.kill()
        raise RuntimeError(f"policy service did not start: {line!r}")
    return proc, m.group(1)


def bench_rpc(
    policies: int = 10_000,
    repos: int = 1_000,
    clients: int = 3,
    concurrency: int = 2,
    warmup: float = 2.0,
    duration: float = 15.0,
) -> dict[str, float]:
    """Evaluate throughput and latency percentiles; prints a summary and returns the numbers."""
    with tempfile.TemporaryDirectory(prefix="policy-bench-") as tmp:
        data = Path(tmp)
        t0 = time.perf_counter()
        n = seed_policies(data, policies, repos)
        seeded = time.perf_counter() - t0
        t0 = time.perf_counter()
        proc, address = _start_server(data)
        startup = time.perf_counter() - t0
        server = psutil.Process(proc.pid)
        cpu0 = sum(server.cpu_times()[:2])
        try:
            queue: mp.Queue = mp.Queue()  # type: ignore[type-arg]
            procs = [
                mp.Process(
                    target=_client,
                    args=(address, repos, concurrency, warmup, duration, 1000 + c, queue),
                )
                for c in range(clients)
            ]
            for p in procs:
                p.start()
            gathered = [queue.get(timeout=warmup + duration + 120) for _ in procs]
            for p in procs:
                p.join()
            server_cpu = sum(server.cpu_times()[:2]) - cpu0
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    latencies = sorted(x for lat, _, _ in gathered for x in lat)
    errors = sum(e for _, e, _ in gathered)
    all_calls = sum(c for _, _, c in gathered)
    if not latencies:
        raise RuntimeError("no successful Evaluate calls")

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000

    out = {
        "policies": n,
        "repositories": repos,
        "clients": clients,
        "in_flight": clients * concurrency,
        "calls": len(latencies),
        "errors": errors,
        "throughput_per_s": len(latencies) / duration,
        "p50_ms": pct(0.50),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
        "mean_ms": statistics.fmean(latencies) * 1000,
        "seed_s": seeded,
        "startup_s": startup,
        "server_cpu_us_per_call": server_cpu / all_calls * 1e6,
    }
    print(
        f"Evaluate RPC: {n} policies over {repos} repositories; {clients} client processes x "
        f"{concurrency} in flight; {duration:.0f} s measured after {warmup:.0f} s warm-up\n"
        f"  {out['calls']} calls, {errors} errors, {out['throughput_per_s']:.0f} Evaluate/s\n"
        f"  latency p50 {out['p50_ms']:.2f} ms, p90 {out['p90_ms']:.2f} ms, "
        f"p99 {out['p99_ms']:.2f} ms, mean {out['mean_ms']:.2f} ms\n"
        f"  server CPU {out['server_cpu_us_per_call']:.0f} us per call "
        f"(user+system over {all_calls} calls incl. warm-up)\n"
        f"  (seeding SQLite {seeded:.1f} s; server start incl. compiling every policy "
        f"{startup:.1f} s)"
    )
    return out


# --- command line ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["eval", "rpc", "all"], default="all")
    parser.add_argument("--policies", type=int, default=10_000)
    parser.add_argument("--repos", type=int, default=1_000)
    parser.add_argument("--clients", type=int, default=3, help="client processes (rpc part)")
    parser.add_argument("--concurrency", type=int, default=2, help="in flight per client")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds measured")
    parser.add_argument(
        "--seconds", type=float, default=1.0, help="seconds measured per figure (eval part)"
    )
    args = parser.parse_args(argv)
    if args.part in ("eval", "all"):
        part1 = globals().get("bench_compiled_vs_cel")
        if part1 is None:
            print("part eval (bench_compiled_vs_cel) is not written yet")
        else:
            part1(args.seconds)
    if args.part in ("rpc", "all"):
        bench_rpc(args.policies, args.repos, args.clients, args.concurrency, duration=args.duration)


if __name__ == "__main__":
    main()
