"""Sign-in with an API token: cookie flags, roles, CSRF, forged writes, expiry, standalone."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from stack.process import StackProcess
from tests.clients.livestack import ADMIN_TOKEN, READ_TOKEN
from tests.console.conftest import Env, sign_in, standalone_console

pytestmark = pytest.mark.registry


def test_pages_need_a_sign_in(page: Page, env: Env) -> None:
    page.goto(env.base + "/registries")
    expect(page).to_have_url(re.compile(r"/login$"))
    expect(page.get_by_label("API token")).to_be_visible()


def test_a_wrong_token_is_refused(page: Page, env: Env) -> None:
    page.goto(env.base + "/login")
    page.get_by_label("API token").fill("not-a-token-of-this-stack")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text("This API token is not valid.")
    assert not [c for c in page.context.cookies() if c["name"] == "mirror_console"]


def test_the_sign_in_form_needs_its_own_csrf_token(page: Page, env: Env) -> None:
    page.goto(env.base + "/login")
    # A sign-in posted from elsewhere has neither the form's token nor its cookie.
    resp = page.request.post(env.base + "/login", form={"token": ADMIN_TOKEN})
    assert resp.status == 403
    resp = page.request.post(env.base + "/login", form={"token": ADMIN_TOKEN, "_csrf": "x"})
    assert resp.status == 403
    assert not [c for c in page.context.cookies() if c["name"] == "mirror_console"]


def test_session_cookie_is_httponly_strict_and_holds_no_token(
    page: Page, context: BrowserContext, env: Env
) -> None:
    sign_in(page, env)
    cookies = {c["name"]: c for c in context.cookies()}
    session = cookies["mirror_console"]
    assert session["httpOnly"] and session["sameSite"] == "Strict"
    assert ADMIN_TOKEN not in session["value"]
    assert "mirror_console_pre" not in cookies
    # Scripts on the page cannot read it.
    assert "mirror_console" not in page.evaluate("document.cookie")
    expect(page.get_by_role("link", name="Add registry")).to_be_visible()
    assert ADMIN_TOKEN not in page.content()


def test_a_post_without_the_csrf_token_is_refused(page: Page, env: Env) -> None:
    sign_in(page, env)
    resp = page.request.post(env.base + "/registries", form={"name": "x", "url": env.dev.url})
    assert resp.status == 403
    assert "CSRF" in resp.text()
    resp = page.request.post(
        env.base + "/registries", form={"name": "x", "url": env.dev.url, "_csrf": "guess"}
    )
    assert resp.status == 403
    with env.client() as c:
        assert "x" not in [e.name for e in c.transfers.iter_endpoints()]


def _csrf_of(page: Page) -> str:
    return page.locator("form.signout input[name=_csrf]").get_attribute("value") or ""


def test_read_only_token_sees_no_write_action_and_a_forged_write_gets_403(
    page: Page, env: Env
) -> None:
    from mirror.v1 import common_pb2, policy_pb2

    with env.client() as c:
        c.transfers.create_endpoint(name="ro-dev", url=env.dev.url)
        policy = c.policies.create(policy=policy_pb2.Policy(
            name="ro-policy", source=policy_pb2.PolicySource(endpoint="ro-dev",
                                                             repository="team/app"),
            target=common_pb2.Target(endpoint="ro-dev", repository="team/copy"),
            rule="true", enabled=True,
        ))
    sign_in(page, env, READ_TOKEN)
    expect(page.get_by_text("read-only")).to_be_visible()
    expect(page.get_by_role("link", name="ro-dev")).to_be_visible()
    expect(page.get_by_role("link", name="Add registry")).to_have_count(0)
    page.get_by_role("link", name="ro-dev").click()
    expect(page.get_by_role("heading", name="Registry ro-dev")).to_be_visible()
    expect(page.get_by_role("link", name="Edit")).to_have_count(0)
    expect(page.get_by_role("button", name="Connect")).to_have_count(0)
    page.goto(env.base + "/repositories/ro-dev/team/app")
    expect(page.get_by_role("heading", name="Mirrors")).to_be_visible()
    expect(page.get_by_role("link", name="New mirror")).to_have_count(0)
    expect(page.locator("tr[data-policy=ro-policy]")).to_be_visible()
    page.get_by_role("link", name="ro-policy").click()
    expect(page.get_by_role("heading", name="Mirror ro-policy")).to_be_visible()
    for name in ("Apply now", "Disable", "Edit", "Delete"):
        expect(page.get_by_role("button", name=name)).to_have_count(0)
        expect(page.get_by_role("link", name=name)).to_have_count(0)
    # The forged write carries the session's own (valid) CSRF token: the role refuses it.
    csrf = _csrf_of(page)
    assert csrf
    for url, form in [
        ("/registries", {"name": "forged", "url": env.dev.url}),
        ("/registries/ro-dev", {"url": "http://127.0.0.1:1"}),
        (f"/policies/{policy.id}/disable", {}),
        (f"/policies/{policy.id}/enable", {}),
        (f"/policies/{policy.id}/apply", {}),
        ("/registries/ro-dev/connect", {}),
        ("/mirrors/connect", {"registry": "ro-dev"}),
        (f"/policies/{policy.id}/delete", {}),
        (f"/policies/{policy.id}/edit", {"name": "renamed", "rule": "false"}),
        ("/registries/ro-dev/delete", {}),
        ("/mirrors", {"name": "forged", "endpoint": "ro-dev", "repository": "team/app",
                      "registry": "ro-dev", "remote_repository": "x/y", "rule": "true"}),
    ]:
        resp = page.request.post(env.base + url, form={**form, "_csrf": csrf})
        assert resp.status == 403, url
        assert "read-only" in resp.text()
    assert page.request.get(env.base + "/mirrors/new").status == 403
    with env.client() as c:
        names = [e.name for e in c.transfers.iter_endpoints()]
        assert "forged" not in names
        assert c.transfers.get_endpoint("ro-dev").url == env.dev.url
        assert [(p.name, p.enabled, p.rule) for p in c.policies.iter()] == [
            ("ro-policy", True, "true")]


def test_sign_out_ends_the_session(page: Page, context: BrowserContext, env: Env) -> None:
    sign_in(page, env)
    old = {c["name"]: c["value"] for c in context.cookies()}["mirror_console"]
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(re.compile(r"/login$"))
    # The old session id is dead even if replayed.
    context.add_cookies([{"name": "mirror_console", "value": old, "url": env.base}])
    page.goto(env.base + "/registries")
    expect(page).to_have_url(re.compile(r"/login$"))


@pytest.fixture
def standalone(env: Env) -> Iterator[str]:
    """A console whose sessions end after 2 idle seconds."""
    with standalone_console(env, "--session-idle", "2") as base:
        yield base


def test_repeated_failed_sign_ins_must_wait(page: Page, env: Env) -> None:
    with standalone_console(env, "--sign-in-attempts", "3", "--sign-in-window", "120") as base:
        for _ in range(3):
            page.goto(base + "/login")
            page.get_by_label("API token").fill("wrong-token-0123456789")
            page.get_by_role("button", name="Sign in").click()
            expect(page.get_by_role("alert")).to_have_text("This API token is not valid.")
        # Even the right token waits now: guessing gets no faster by trying on.
        page.goto(base + "/login")
        page.get_by_label("API token").fill(ADMIN_TOKEN)
        with page.expect_response(lambda r: r.request.method == "POST") as answer:
            page.get_by_role("button", name="Sign in").click()
        assert answer.value.status == 429
        assert int(answer.value.headers["retry-after"]) > 100
        expect(page.get_by_role("alert")).to_contain_text("Too many failed sign-ins")
        assert not [c for c in page.context.cookies() if c["name"] == "mirror_console"]


def test_standalone_console_and_idle_sessions_expire(page: Page, env: Env, standalone: str
                                                     ) -> None:
    page.goto(standalone + "/login")
    page.get_by_label("API token").fill(ADMIN_TOKEN)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Registries")).to_be_visible()
    signed_in_at = time.monotonic()
    # Idle for longer than 2 s: the next request finds the session gone.
    deadline = signed_in_at + 30
    while time.monotonic() < deadline:
        page.wait_for_timeout(500)
        if time.monotonic() - signed_in_at > 2.5:
            break
    page.goto(standalone + "/registries")
    expect(page).to_have_url(re.compile(r"/login$"))


def test_an_open_live_page_does_not_hold_up_the_stack_shutdown(
    page: Page, env: Env, tmp_path: Path
) -> None:
    from mirror.client import connect
    from mirror.v1 import common_pb2, policy_pb2

    stack = StackProcess(
        tmp_path / "data", env={"MIRROR_ADMIN_TOKEN": ADMIN_TOKEN},
        extra_args=["--reconcile-interval", "0"],
    )
    stack.start(timeout=60)
    try:
        with connect(stack.grpc_address, token=ADMIN_TOKEN) as c:
            c.transfers.create_endpoint(name="d", url=env.dev.url)
            policy = c.policies.create(policy=policy_pb2.Policy(
                name="live", source=policy_pb2.PolicySource(endpoint="d", repository="team/a"),
                target=common_pb2.Target(endpoint="d", repository="team/b"), rule="true",
                enabled=True,
            ))
        page.goto(stack.http_base + "/login")
        page.get_by_label("API token").fill(ADMIN_TOKEN)
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("heading", name="Registries")).to_be_visible()
        with page.expect_response(lambda r: r.url.endswith(f"/policies/{policy.id}/live")):
            page.goto(stack.http_base + f"/policies/{policy.id}")
        proc = stack.proc
        assert proc is not None
        started = time.monotonic()
        stack.stop(timeout=30)
        # A graceful exit (not the SIGKILL after the timeout), well before aiohttp's 60 s
        # wait for open handlers: the live stream ends on shutdown (or when its calls to the
        # stopped gRPC server fail), it does not keep the HTTP server waiting.
        assert proc.returncode == 0
        assert time.monotonic() - started < 10
    finally:
        stack.stop()
