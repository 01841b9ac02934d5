"""`make demo`: the seed's scenario on this machine, from nothing, in about ten seconds.

Starts two local docker-registry processes (dev, and qa with an htpasswd service account) that
notify the gateway, starts `mirror-stack`, registers both endpoints, creates the policy
"dev/website tags ending in stable go to qa/website tagged with the promotion time", pushes
dev/website:1.0-dev and dev/website:1.0-stable with skopeo, and shows what arrived in QA.
Everything it started is stopped at the end.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from mirror.client import Client, connect
from mirror.v1 import gateway_pb2
from rich.console import Console
from rich.table import Table

from registry_testkit.images import ImageBuilder, digest_of, list_tags, push
from registry_testkit.registry import RegistryOptions, RegistryProcess, launch
from stack.process import StackProcess

SECRET = "demo-webhook-secret-change-me"
QA_USER, QA_PASSWORD = "mirror-bot", "mirror-bot-demo-password"
Run = gateway_pb2.Run
FINAL = {Run.STATE_SUCCEEDED, Run.STATE_FAILED, Run.STATE_NOT_MATCHED}

# Piped output (CI logs) gets room for the table; a terminal keeps its own width.
console = Console(width=None if sys.stdout.isatty() else 120)


@contextlib.contextmanager
def registry(workdir: Path, options: RegistryOptions) -> Iterator[RegistryProcess]:
    reg = launch(options, workdir)
    try:
        yield reg
    finally:
        reg.stop()


def step(text: str) -> None:
    console.print(f"[bold cyan]>[/] {text}")


def wait_runs(client: Client, policy_id: str, n: int) -> list[gateway_pb2.Run]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        runs = list(client.gateway.list_runs(policy_id=policy_id).runs)
        if len(runs) >= n and all(r.state in FINAL for r in runs):
            return runs
        time.sleep(0.2)
    raise TimeoutError("the runs did not finish within 60 s")


def run_demo(workdir: Path) -> None:
    stack = StackProcess(workdir / "stack-data", webhook_secret=SECRET)
    notify = stack.registry_notification("mirror-gateway")
    with contextlib.ExitStack() as es:
        step("starting registries: dev (notifies the gateway) and qa (service account)")
        dev = es.enter_context(
            registry(workdir / "dev", RegistryOptions(notifications=[notify]))
        )
        qa = es.enter_context(
            registry(workdir / "qa", RegistryOptions(htpasswd_users={QA_USER: QA_PASSWORD}))
        )
        console.print(f"  dev  {dev.url}\n  qa   {qa.url}  (user {QA_USER})")
        step("starting mirror-stack")
        stack.start()
        es.callback(stack.stop)
        console.print(
            "\n".join("  " + line for line in stack.output.splitlines()[1:-1]), highlight=False
        )
        client = es.enter_context(connect(stack.grpc_address, timeout=30))

        step("registering endpoints dev and qa")
        client.transfers.create_endpoint(name="dev", url=dev.url)
        client.transfers.create_endpoint(
            name="qa", url=qa.url, username=QA_USER, secret=QA_PASSWORD
        )
        step('creating policy: dev/website on endpoint dev, tag endswith "stable" -> '
             "qa/website on endpoint qa")
        pol = client.policies.create(
            name="website-to-qa", source_endpoint="dev", source_repository="dev/website",
            rule='tag endswith "stable"',
            endpoint="qa", repository="qa/website", tag_template="%Y%m%d-%H%M%S",
        )
        step("building two images and pushing dev/website:1.0-dev and :1.0-stable (skopeo)")
        images = ImageBuilder(workdir / "images")
        push(images.image("1.0-dev", labels={"stage": "dev"}), dev, "dev/website")
        push(images.image("1.0-stable", labels={"stage": "stable"}), dev, "dev/website")
        t0 = time.monotonic()
        runs = wait_runs(client, pol.id, 2)
        console.print(f"  both events handled in {time.monotonic() - t0:.2f} s")
        show(dev, qa, runs, client.gateway.get_policy_status(pol.id))


def short(digest: str) -> str:
    return digest[:19] + "…"


def show(
    dev: RegistryProcess,
    qa: RegistryProcess,
    runs: list[gateway_pb2.Run],
    status: gateway_pb2.PolicyStatus,
) -> None:
    table = Table(title="Runs of policy website-to-qa")
    for col in ("source tag", "state", "QA tag", "dev digest", "QA digest"):
        table.add_column(col, no_wrap=True)
    notes = []
    for r in sorted(runs, key=lambda r: r.source.reference):
        src_digest = digest_of(dev, "dev/website", r.source.reference)
        qa_cell = "-"
        if r.state == Run.STATE_SUCCEEDED:
            qa_digest = digest_of(qa, "qa/website", r.destination_tag, QA_USER, QA_PASSWORD)
            color = "green" if qa_digest == src_digest else "red"
            qa_cell = f"[{color}]{short(qa_digest)}[/]"
        table.add_row(
            r.source.reference,
            Run.State.Name(r.state).removeprefix("STATE_"),
            r.destination_tag if r.state == Run.STATE_SUCCEEDED else "-",
            short(src_digest),
            qa_cell,
        )
        notes.append(f"  {r.source.reference}: {r.message}")
    console.print(table)
    console.print("\n".join(notes), highlight=False)
    qa_tags = list_tags(qa, "qa/website", QA_USER) if any(
        r.state == Run.STATE_SUCCEEDED for r in runs
    ) else []
    console.print(f"QA registry qa/website tags: {qa_tags}")
    for r in runs:
        if r.state == Run.STATE_SUCCEEDED:
            src = digest_of(dev, "dev/website", r.source.reference)
            dst = digest_of(qa, "qa/website", r.destination_tag, QA_USER, QA_PASSWORD)
            same = "identical" if src == dst else "DIFFERENT"
            left = f"dev/website:{r.source.reference}"
            right = f"qa/website:{r.destination_tag}"
            width = max(len(left), len(right))
            console.print(f"  {left:<{width}}  {src}", highlight=False)
            console.print(f"  {right:<{width}}  {dst}  ({same})", highlight=False)
    console.print(
        f"Policy status: last={Run.State.Name(status.last_state).removeprefix('STATE_')} "
        f"runs={status.runs_total} succeeded={status.runs_succeeded} failed={status.runs_failed}"
    )


def main() -> int:
    missing = [b for b in ("docker-registry", "skopeo") if shutil.which(b) is None]
    if missing:
        console.print(f"[red]missing programs: {', '.join(missing)}[/] (apt-get install them)")
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="mirror-demo-"))
    try:
        run_demo(workdir)
    except Exception as exc:
        console.print(f"[red]demo failed:[/] {exc}")
        log = workdir / "stack-data-stack.log"
        if log.exists():
            console.print(log.read_text(errors="replace")[-3000:])
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    console.print("[bold green]done[/]: everything the demo started was stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
