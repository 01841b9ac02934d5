"""The console of its own (`python -m console --service-address ...`) against the services
spread out, each its own process with its own address: the SDK is its only way in."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from mirror.client import connect
from playwright.sync_api import Page, expect

from registry_testkit.images import ImageBuilder, digest_of, push
from registry_testkit.ports import free_port
from registry_testkit.registry import RegistryOptions, RegistryProcess, start_registry
from tests.clients.livestack import ADMIN_TOKEN, READ_TOKEN
from tests.console.conftest import ROOT
from tests.support.services import running, split_commands

pytestmark = pytest.mark.registry


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Transfer, policy, scanner and gateway processes, then the console dialing each."""
    tmp = tmp_path_factory.mktemp("split")
    names = ("policy", "transfer", "scanner", "gateway", "http", "console")
    addr = {n: f"127.0.0.1:{free_port()}" for n in names}
    env = {**os.environ, "MIRROR_ADMIN_TOKEN": ADMIN_TOKEN, "MIRROR_READ_TOKEN": READ_TOKEN}
    with running(split_commands(tmp, addr), tmp, env):
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
        try:
            assert console.stdout is not None
            assert "console ready" in console.stdout.readline()
            yield addr
        finally:
            console.terminate()
            console.wait(timeout=15)


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
