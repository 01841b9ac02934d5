"""A real mirror-stack (console at / on its HTTP port), real registries and a real Chromium.

One stack, two registries and one browser per test module (they take seconds to start); each
test gets a fresh browser context, so cookies never leak from one test to the next.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
from mirror.client import Client, connect
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from registry_testkit.registry import RegistryOptions, RegistryProcess, start_registry
from stack.process import StackProcess
from tests.clients.livestack import ADMIN_TOKEN, READ_TOKEN, WEBHOOK_SECRET

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
QA_USER = "ci"
QA_PASSWORD = "qa-service-" + "8d2e61f0c7a4b935"

pytestmark = pytest.mark.registry


@dataclass
class Env:
    stack: StackProcess
    dev: RegistryProcess
    qa: RegistryProcess
    tmp: Path

    @property
    def base(self) -> str:
        return self.stack.http_base

    def client(self, token: str = ADMIN_TOKEN) -> Client:
        return connect(self.stack.grpc_address, token=token)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("console")
    stack = StackProcess(
        tmp / "stack-data", webhook_secret=WEBHOOK_SECRET,
        env={"MIRROR_ADMIN_TOKEN": ADMIN_TOKEN, "MIRROR_READ_TOKEN": READ_TOKEN},
        extra_args=["--reconcile-interval", "0"],
    )
    note = stack.registry_notification("mirror", timeout="2s", backoff="200ms")
    with ExitStack() as es:
        dev = es.enter_context(start_registry(RegistryOptions(notifications=[note]), tmp / "dev"))
        qa = es.enter_context(start_registry(
            RegistryOptions(tls=True, htpasswd_users={QA_USER: QA_PASSWORD}), tmp / "qa"
        ))
        stack.start(timeout=60)
        es.callback(stack.stop)
        yield Env(stack, dev, qa, tmp)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    ctx.set_default_timeout(20_000)
    yield ctx
    ctx.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()


def sign_in(page: Page, env: Env, token: str = ADMIN_TOKEN) -> None:
    page.goto(env.base + "/login")
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/registries$"))


ROOT = str(Path(__file__).resolve().parents[2])
