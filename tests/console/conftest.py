"""A real mirror-stack (console at / on its HTTP port), real registries and a real Chromium.

One stack, two registries and one browser per test module (they take seconds to start); each
test gets a fresh browser context, so cookies never leak from one test to the next.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from mirror.client import Client, connect
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from registry_testkit.registry import RegistryOptions, RegistryProcess, start_registry
from stack.process import StackProcess, free_port
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


def sign_in(page: Page, env: Env, token: str = ADMIN_TOKEN, base: str = "") -> None:
    page.goto((base or env.base) + "/login")
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/registries$"))


ROOT = str(Path(__file__).resolve().parents[2])


@contextmanager
def standalone_console(env: Env, *args: str) -> Iterator[str]:
    """`python -m console` of its own against the stack's gRPC port."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "console", "--listen", f"127.0.0.1:{port}",
         "--address", env.stack.grpc_address, *args],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "console ready" in line, line
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def public_key_pem() -> tuple[str, str]:
    """A fresh Ed25519 public key (PEM) and its fingerprint (sha256 of the DER, hex)."""
    import hashlib

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    public = Ed25519PrivateKey.generate().public_key()
    der = public.public_bytes(serialization.Encoding.DER,
                              serialization.PublicFormat.SubjectPublicKeyInfo)
    pem = public.public_bytes(serialization.Encoding.PEM,
                              serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return pem, hashlib.sha256(der).hexdigest()
