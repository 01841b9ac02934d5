"""Pull mirroring against `skopeo sync`: an initial sync and an unchanged re-sync.

    .venv/bin/python bench/pull_sync.py [--repos 20] [--tags 10] [--base-mib 4]

One source registry holds REPOS x TAGS images that share a base layer (plus a small layer of
their own); two empty destinations. Ours: `mirror-stack` with one scheduled policy over
`src/**` -> `mirror/{path}` (the first poll syncs everything). skopeo: `skopeo sync --all`
of the same repositories (a YAML source listing them) into the other destination. Both read
the source through the same counting proxy, so the requests each makes are counted the same
way. Then both run again with nothing changed: ours is the next poll (its own start and end
times), skopeo a second `skopeo sync`. Prints each figure beside skopeo's and the ratio.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
from google.protobuf.duration_pb2 import Duration  # noqa: E402
from mirror.client import connect  # noqa: E402
from mirror.v1 import (  # noqa: E402
    common_pb2,
    gateway_pb2,
    gateway_pb2_grpc,
    policy_pb2,
    policy_pb2_grpc,
    transfer_pb2,
    transfer_pb2_grpc,
)

from bench.counting_proxy import CountingProxy  # noqa: E402
from registry_testkit.images import ImageBuilder, push  # noqa: E402
from registry_testkit.registry import RegistryOptions, start_registry  # noqa: E402
from stack.process import StackProcess  # noqa: E402


def populate(src: object, work: Path, repos: int, tags: int, base_mib: int) -> int:
    """Push REPOS x TAGS images sharing one base layer; returns the image count."""
    builder = ImageBuilder(work / "img")
    first = builder.image("base", layers=[base_mib << 20, 1024], name="shared")
    # The first layer of the manifest (blobs also hold the config).
    base_digest = json.loads(first.manifest)["layers"][0]["digest"]
    base = next(b for b in first.blobs if b.digest == base_digest)
    n = 0
    for r in range(repos):
        for t in range(tags):
            img = builder.image(f"r{r}-t{t}", layers=[base, 4096 + t], name="shared")
            push(img, src, f"src/app{r:02d}", tag=f"1.{t}.0")
            n += 1
    return n


def count_tags(client: object, reg_url: str, repos: int) -> int:
    import json
    import urllib.request

    total = 0
    for r in range(repos):
        try:
            with urllib.request.urlopen(f"{reg_url}/v2/mirror/app{r:02d}/tags/list") as resp:
                total += len(json.load(resp).get("tags") or [])
        except Exception:
            pass
    return total


def wait_runs_ended(gateway: gateway_pb2_grpc.GatewayServiceStub, policy_id: str, n: int) -> float:
    """Wait until the policy has `n` ended runs; the latest end time (epoch seconds)."""
    deadline = time.monotonic() + 900
    while True:
        runs, token = [], ""
        while True:
            page = gateway.ListRuns(
                gateway_pb2.ListRunsRequest(policy_id=policy_id, page_size=500, page_token=token),
                timeout=30,
            )
            runs += list(page.runs)
            token = page.next_page_token
            if not token:
                break
        ended = [r for r in runs if r.HasField("end_time")]
        if len(ended) >= n:
            failed = [r for r in ended if r.state != gateway_pb2.Run.STATE_SUCCEEDED]
            if failed:
                raise SystemExit(f"{len(failed)} runs did not succeed: {failed[0].message}")
            return max(r.end_time.ToNanoseconds() for r in ended) / 1e9
        if time.monotonic() > deadline:
            raise TimeoutError(f"the initial sync did not finish ({len(ended)}/{n} runs ended)")
        # The time is the runs' own end time, so looking seldom costs no precision (and
        # listing every run often would load the stack being timed).
        time.sleep(1.0)


def _pct(values: list[float]) -> str:
    v = sorted(values)
    if not v:
        return "-"
    pick = [v[0], v[len(v) // 2], v[int(len(v) * 0.9)], v[-1]]
    return " / ".join(f"{x:6.2f}" for x in pick)


def _kinds(kinds: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]))


def print_timeline(gateway: gateway_pb2_grpc.GatewayServiceStub,
                   transfers: transfer_pb2_grpc.TransferServiceStub,
                   policy_id: str, wall0: float) -> None:
    """Seconds (min / median / p90 / max) of each phase of the initial sync's runs."""
    runs = list(gateway.ListRuns(
        gateway_pb2.ListRunsRequest(policy_id=policy_id, page_size=1000), timeout=30).runs)
    jobs: dict[str, transfer_pb2.Transfer] = {}
    token = ""
    while True:
        page = transfers.ListTransfers(
            transfer_pb2.ListTransfersRequest(page_size=1000, page_token=token), timeout=30)
        jobs.update({t.id: t for t in page.transfers})
        token = page.next_page_token
        if not token:
            break

    def ts(t: object) -> float:
        return t.ToNanoseconds() / 1e9  # type: ignore[attr-defined]

    phases: dict[str, list[float]] = {k: [] for k in (
        "run created", "run created -> job created",
        "job created -> job started", "job copying", "job ended -> run ended")}
    for r in runs:
        job = jobs.get(r.transfer_id)
        phases["run created"].append(ts(r.create_time) - wall0)
        if job is None:
            continue
        phases["run created -> job created"].append(ts(job.create_time) - ts(r.create_time))
        phases["job created -> job started"].append(ts(job.start_time) - ts(job.create_time))
        phases["job copying"].append(ts(job.end_time) - ts(job.start_time))
        phases["job ended -> run ended"].append(ts(r.end_time) - ts(job.end_time))
    polls = list(gateway.ListPolls(
        gateway_pb2.ListPollsRequest(policy_id=policy_id, page_size=50), timeout=30).polls)
    first = min(polls, key=lambda p: p.start_time.ToNanoseconds())
    print("timeline (s since CreatePolicy was sent: min / median / p90 / max):")
    print(f"  {'first poll started':44s} {ts(first.start_time) - wall0:6.2f}")
    for name, values in phases.items():
        print(f"  {name:44s} {_pct(values)}")


def skopeo_sync(proxy_host: str, dest_host: str, repos: int, work: Path) -> float:
    spec = work / "sync.yml"
    lines = [f"{proxy_host}:", "  tls-verify: false", "  images-by-tag-regex:"]
    lines += [f"    src/app{r:02d}: '.*'" for r in range(repos)]
    spec.write_text("\n".join(lines) + "\n")
    t0 = time.monotonic()
    done = subprocess.run(
        ["skopeo", "sync", "--all", "--src", "yaml", "--dest", "docker",
         "--dest-tls-verify=false", str(spec), f"{dest_host}/mirror"],
        capture_output=True, text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"skopeo sync failed: {done.stderr.strip()[-2000:]}")
    return time.monotonic() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repos", type=int, default=20)
    ap.add_argument("--tags", type=int, default=10)
    ap.add_argument("--base-mib", type=int, default=4)
    ap.add_argument("--max-concurrency", type=int, default=0,
                    help="the endpoints' max_concurrency (0: the service default)")
    ap.add_argument("--timeline", action="store_true",
                    help="also print where the initial sync's time went (run and job phases)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-pull-"))
    with (
        start_registry(RegistryOptions(), work / "src") as src,
        start_registry(RegistryOptions(), work / "ours") as ours,
        start_registry(RegistryOptions(), work / "theirs") as theirs,
    ):
        proxy = CountingProxy(src.url)
        n = populate(src, work, args.repos, args.tags, args.base_mib)
        print(f"source: {args.repos} repositories x {args.tags} tags = {n} images, "
              f"{args.base_mib} MiB shared base layer")

        mark = proxy.count()  # the proxy logs every request; count those after a mark
        t_skopeo = skopeo_sync(proxy.url.split("//", 1)[1], theirs.host, args.repos, work)
        skopeo_requests = proxy.count() - mark
        skopeo_kinds = proxy.kinds(mark)
        assert count_tags(None, theirs.url, args.repos) == n

        stack = StackProcess(
            work / "data", extra_args=["--reconcile-interval", "0", "--log-level", "WARNING"]
        )
        stack.start()
        try:
            client = connect(stack.grpc_address)
            mc = args.max_concurrency or None
            client.transfers.create_endpoint(name="src", url=proxy.url, max_concurrency=mc)
            client.transfers.create_endpoint(name="ours", url=ours.url, max_concurrency=mc)
            channel = grpc.insecure_channel(stack.grpc_address)
            policies = policy_pb2_grpc.PolicyServiceStub(channel)
            gateway = gateway_pb2_grpc.GatewayServiceStub(channel)
            # The stack has finished starting: its rule workers (a fork server that preloads
            # the rule modules, ~0.5 s after start) take a rule. Timed from here, as skopeo
            # is timed from its start, not from its installation.
            policies.ValidateRule(policy_pb2.ValidateRuleRequest(rule="true"), timeout=60)
            mark = proxy.count()
            wall0 = time.time()

            def list_polls(policy_id: str) -> list[gateway_pb2.Poll]:
                return list(gateway.ListPolls(
                    gateway_pb2.ListPollsRequest(policy_id=policy_id, page_size=50), timeout=10
                ).polls)

            pol = policies.CreatePolicy(
                policy_pb2.CreatePolicyRequest(
                    policy=policy_pb2.Policy(
                        name="pull-src",
                        source=policy_pb2.PolicySource(endpoint="src", repository="src/**"),
                        rule="true",
                        target=common_pb2.Target(endpoint="ours", repository="mirror/{path}"),
                        tag_template="%n",
                        enabled=True,
                        trigger=policy_pb2.PolicyTrigger(
                            schedule=policy_pb2.ScheduleTrigger(interval=Duration(seconds=5))
                        ),
                    )
                ),
                timeout=60,
            )
            saved = time.time() - wall0
            # Done when every image's run has ended; the time is the last run's own end
            # time (watching the destination's tag lists would load the registry we time).
            t_end = wait_runs_ended(gateway, pol.id, n)
            t_ours = t_end - wall0
            assert count_tags(None, ours.url, args.repos) == n
            if args.timeline:
                jobs = transfer_pb2_grpc.TransferServiceStub(channel)
                print(f"  {'CreatePolicy returned (checks the target)':44s} {saved:6.2f}")
                print_timeline(gateway, jobs, pol.id, wall0)
            # Up to the last run's end: the next poll may start before this loop sees it.
            ours_requests = proxy.count_until(t_end) - mark
            ours_kinds = proxy.kinds(mark, t_end)

            # Unchanged: the next poll of ours, a second skopeo sync.
            polls_before = len(list_polls(pol.id))
            deadline = time.monotonic() + 60
            while True:
                polls = list_polls(pol.id)
                done = [p for p in polls if p.HasField("end_time")]
                if len(done) > polls_before:
                    idle: gateway_pb2.Poll = done[0]
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError("no second poll")
                time.sleep(0.05)
            idle_s = (idle.end_time.ToNanoseconds() - idle.start_time.ToNanoseconds()) / 1e9
            idle_requests = idle.requests
            mark = proxy.count()
            t_skopeo2 = skopeo_sync(proxy.url.split("//", 1)[1], theirs.host, args.repos, work)
            skopeo2_requests = proxy.count() - mark
            client.close()
            channel.close()
        finally:
            stack.stop()
            proxy.stop()
    print(f"initial sync:   ours {t_ours:7.2f} s  skopeo sync {t_skopeo:7.2f} s  "
          f"ratio {t_ours / t_skopeo:.2f} (target <= 0.5); source requests "
          f"{ours_requests} vs {skopeo_requests}")
    print(f"  source requests by kind, ours:   {_kinds(ours_kinds)}")
    print(f"  source requests by kind, skopeo: {_kinds(skopeo_kinds)}")
    print(f"unchanged sync: ours {idle_s:7.2f} s  skopeo sync {t_skopeo2:7.2f} s  "
          f"ratio {idle_s / t_skopeo2:.2f} (target <= 0.2); source requests "
          f"{idle_requests} (counted by the poll) vs {skopeo2_requests}; "
          f"tags changed in the idle poll: {idle.tags_changed}")


if __name__ == "__main__":
    main()
