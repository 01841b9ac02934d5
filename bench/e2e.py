"""End-to-end latency: from `skopeo copy` returning to the mirrored tag being readable.

    .venv/bin/python bench/e2e.py [--runs 30] [--write BENCHMARKS.md]

Starts a dev registry that notifies the gateway, a qa registry, and `mirror-stack` as a child
process; creates a policy (`tag endswith "stable"`, template %n); then, one at a time, pushes a
small new image (1 KiB layer) to dev/bench:<i>-stable and polls the qa registry until the tag
answers. The transfer's own time comes from the Transfer's start and end times; the gateway's
share is the rest (registry notification, inbox, Evaluate, StartTransfer, job pickup).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mirror.client import Client, connect  # noqa: E402
from mirror.v1 import transfer_pb2  # noqa: E402

from registry_testkit.images import ImageBuilder, push  # noqa: E402
from registry_testkit.registry import RegistryOptions, start_registry  # noqa: E402
from stack.process import StackProcess  # noqa: E402

SECRET = "bench-webhook-secret-0123456789"
ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)


def readable(url: str) -> bool:
    req = urllib.request.Request(url, method="HEAD", headers={"Accept": ACCEPT})
    try:
        with urllib.request.urlopen(req, timeout=2) as r:
            return r.status == 200
    except urllib.error.HTTPError:
        return False


def finished_transfer(client: Client, policy_id: str, tag: str) -> transfer_pb2.Transfer:
    """The transfer of the run for `tag`, once it has recorded its end time."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        runs = client.gateway.list_runs(policy_id=policy_id, page_size=5).runs
        run = next((r for r in runs if r.source.reference == tag and r.transfer_id), None)
        if run is not None:
            tr = client.transfers.get(run.transfer_id)
            if tr.HasField("end_time"):
                return tr
        time.sleep(0.01)
    raise TimeoutError(f"the transfer of {tag} did not finish")


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    k = max(0, min(len(s) - 1, round(p / 100 * (len(s) - 1))))
    return s[k]


def run(n: int) -> dict[str, list[float]]:
    work = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    stack = StackProcess(
        work / "data",
        webhook_secret=SECRET,
        extra_args=["--reconcile-interval", "0", "--log-level", "WARNING"],
    )
    notify = stack.registry_notification("gw")
    out: dict[str, list[float]] = {
        k: [] for k in ("total", "transfer", "gateway", "to_created", "queued")
    }
    with (
        start_registry(RegistryOptions(notifications=[notify]), work / "dev") as dev,
        start_registry(RegistryOptions(), work / "qa") as qa,
    ):
        stack.start()
        try:
            client = connect(stack.grpc_address)
            for name, reg in (("dev", dev), ("qa", qa)):
                client.transfers.create_endpoint(name=name, url=reg.url)
            pol = client.policies.create(
                name="bench", source_endpoint="dev", source_repository="dev/bench",
                rule='tag endswith "stable"',
                endpoint="qa", repository="qa/bench", tag_template="%n",
            )
            builder = ImageBuilder(work / "img")
            images = [builder.image(f"{i}-stable") for i in range(n + 1)]
            for i, img in enumerate(images):
                tag = f"{i}-stable"
                push(img, dev, "dev/bench", tag)
                t0 = time.monotonic()
                wall0 = time.time()
                url = f"{qa.url}/v2/qa/bench/manifests/{tag}"
                while not readable(url):
                    if time.monotonic() - t0 > 30:
                        raise TimeoutError(f"{tag} not mirrored within 30 s")
                    time.sleep(0.002)
                total = time.monotonic() - t0
                tr = finished_transfer(client, pol.id, tag)
                copy = (tr.end_time.ToNanoseconds() - tr.start_time.ToNanoseconds()) / 1e9
                if i == 0:
                    continue  # warm-up: first connections, first token, caches
                out["total"].append(total)
                out["transfer"].append(copy)
                out["gateway"].append(total - copy)
                out["to_created"].append(tr.create_time.ToNanoseconds() / 1e9 - wall0)
                out["queued"].append(
                    (tr.start_time.ToNanoseconds() - tr.create_time.ToNanoseconds()) / 1e9
                )
            client.close()
        finally:
            stack.stop()
    return out


def report(res: dict[str, list[float]], n: int, cmd: str) -> str:
    lines = [
        "## End to end",
        "",
        f"Command: `{cmd}` ({n} runs after one warm-up; small images: one 1 KiB",
        f"layer; loopback registries; {os.cpu_count()} CPUs shared with other work). Time from",
        "`skopeo copy` returning to",
        "the mirrored tag answering `HEAD` at the destination (polled every 2 ms). The",
        "transfer's share is its Transfer start->end time; the gateway's share is the rest",
        "(registry notification delivery, inbox commit, facts, Evaluate, StartTransfer, job",
        "pickup). The registry sends its event as soon as the manifest PUT succeeds, before",
        "skopeo exits, so most of the gateway's own work overlaps skopeo's exit and the share",
        "measured after it is small.",
        "",
        "| measure | p50 | p95 | mean |",
        "|---|---|---|---|",
    ]
    for key, label in (
        ("total", "push done -> tag readable"),
        ("transfer", "transfer (copy) itself"),
        ("gateway", "gateway share (total - transfer)"),
        ("to_created", "push done -> transfer created (negative: before skopeo exited)"),
        ("queued", "transfer created -> started (job pickup)"),
    ):
        v = res[key]
        lines.append(
            f"| {label} | {pct(v, 50) * 1000:.0f} ms | {pct(v, 95) * 1000:.0f} ms "
            f"| {statistics.mean(v) * 1000:.0f} ms |"
        )
    lines.append("")
    met = "met" if pct(res["total"], 50) < 0.3 else "missed"
    lines.append(f"Target: p50 under 300 ms ({met}).")
    return "\n".join(lines) + "\n"


def write_section(path: Path, section: str) -> None:
    """Replace (or append) the "## End to end" section, leaving the others alone."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    start = text.find("## End to end")
    if start >= 0:
        nxt = text.find("\n## ", start + 1)
        text = text[:start] + section + (text[nxt + 1 :] if nxt >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--write", default="", help="update this BENCHMARKS.md's End to end section")
    args = ap.parse_args()
    res = run(args.runs)
    cmd = f".venv/bin/python bench/e2e.py --runs {args.runs}"
    section = report(res, args.runs, cmd)
    print(section)
    if args.write:
        write_section(Path(args.write), section)


if __name__ == "__main__":
    main()
