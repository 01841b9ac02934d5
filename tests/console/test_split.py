"""The console of its own (`python -m console --service-address ...`) against the services
spread out, each its own process with its own address: the SDK is its only way in."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mirror.client import connect
from playwright.sync_api import Page, expect

from registry_testkit.images import ImageBuilder, digest_of, push
from registry_testkit.ports import free_port
from registry_testkit.registry import RegistryOptions, RegistryProcess, start_registry
from tests.clients.livestack import ADMIN_TOKEN, READ_TOKEN
from tests.console.conftest import ROOT

pytestmark = pytest.mark.registry


def _wait_serving(address: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    with grpc.insecure_channel(address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{address} exited: {log.read_text()[-2000:]}")
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    return
            except grpc.RpcError:
                time.sleep(0.1)
    raise RuntimeError(f"{address} not serving: {log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Transfer, policy, scanner and gateway processes, then the console dialing each."""
    tmp = tmp_path_factory.mktemp("split")
    names = ("policy", "transfer", "scanner", "gateway", "http", "console")
    addr = {n: f"127.0.0.1:{free_port()}" for n in names}
    tdata = tmp / "transfer"
    cmds = {
        "transfer": ["transfer_service", "--grpc-listen", addr["transfer"], "--data", str(tdata)],
        "policy": ["policy_service", "--grpc-listen", addr["policy"],
                   "--data", str(tmp / "policy"), "--transfer-address", addr["transfer"]],
        "scanner": ["scanner", "--grpc-listen", addr["scanner"],
                    "--data", str(tmp / "scanner"), "--transfer-address", addr["transfer"]],
        "gateway": ["gateway", "--grpc-listen", addr["gateway"], "--http-listen", addr["http"],
                    "--data", str(tmp / "gateway"), "--policy-address", addr["policy"],
                    "--transfer-address", addr["transfer"], "--scanner-address", addr["scanner"],
                    "--reconcile-interval", "0"],
    }
    env = {**os.environ, "MIRROR_ADMIN_TOKEN": ADMIN_TOKEN, "MIRROR_READ_TOKEN": READ_TOKEN}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for name in ("transfer", "policy", "scanner", "gateway"):
            log = tmp / f"{name}.log"
            p = subprocess.Popen([sys.executable, "-m", *cmds[name]], cwd=ROOT, env=env,
                                 stdout=open(log, "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115
            procs.append(p)
            _wait_serving(addr[name], p, log)
        console = subprocess.Popen(
            [sys.executable, "-m", "console", "--listen", addr["console"],
             # The default address answers nothing: every service has its own.
             "--address", f"127.0.0.1:{free_port()}",
             "--service-address", f"policies={addr['policy']}",
             "--service-address", f"transfers={addr['transfer']}",
             "--service-address", f"gateway={addr['gateway']}",
             "--service-address", f"scanner={addr['scanner']}"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        procs.append(console)  # type: ignore[arg-type]
        assert console.stdout is not None
        assert "console ready" in console.stdout.readline()
        yield addr
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.fixture(scope="module")
def registries(tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[tuple[RegistryProcess, RegistryProcess]]:
    tmp = tmp_path_factory.mktemp("split-registries")
    with start_registry(RegistryOptions(), tmp / "dev") as dev, \
            start_registry(RegistryOptions(), tmp / "qa") as qa:
        yield dev, qa


def test_new_mirror_save_and_apply_against_split_services(
    page: Page, split: dict[str, str], registries: tuple[RegistryProcess, RegistryProcess],
    tmp_path: Path,
) -> None:
    dev, qa = registries
    image = ImageBuilder(tmp_path).image("2.1-stable")
    push(image, dev, "team/app")
    addresses = {"policies": split["policy"], "transfers": split["transfer"],
                 "gateway": split["gateway"], "scanner": split["scanner"]}
    with connect(split["policy"], token=ADMIN_TOKEN, addresses=addresses) as c:
        c.transfers.create_endpoint(name="dev", url=dev.url)
        c.transfers.create_endpoint(name="qa", url=qa.url)
    base = f"http://{split['console']}"
    page.goto(base + "/login")
    page.get_by_label("API token").fill(ADMIN_TOKEN)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("link", name="qa")).to_be_visible()
    page.goto(base + "/repositories/dev/team/app")
    page.get_by_role("link", name="New mirror").click()
    page.locator("#registry").select_option("qa")
    page.get_by_label("Remote repository").fill("copies/app")
    page.get_by_label("Mirror name").fill("split-copy")
    page.get_by_role("button", name="Save & Apply").click()
    expect(page.get_by_text("Applied: 1 of 1 tags matched.")).to_be_visible()
    run = page.locator("tr.run", has_text="2.1-stable")
    expect(run.locator(".state")).to_have_text("SUCCEEDED", timeout=60_000)
    assert digest_of(qa, "copies/app", "2.1-stable") == image.digest


def test_mirror_stack_no_console_serves_no_pages(tmp_path: Path) -> None:
    """`mirror-stack --no-console`: the HTTP port keeps its own paths, `/` is not the console."""
    import urllib.error
    import urllib.request

    from stack.process import StackProcess

    stack = StackProcess(tmp_path / "data", extra_args=["--no-console"])
    stack.start(timeout=60)
    try:
        assert "mirror-stack ready" in stack.output and "  console " not in stack.output
        with urllib.request.urlopen(stack.http_base + "/healthz", timeout=10) as resp:
            assert resp.status == 200
        for path in ("/", "/login", "/static/htmx.min.js"):
            with pytest.raises(urllib.error.HTTPError) as missing:
                urllib.request.urlopen(stack.http_base + path, timeout=10)
            assert missing.value.code == 404, path
    finally:
        stack.stop()
