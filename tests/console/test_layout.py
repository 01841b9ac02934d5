"""Usable: every control has a label, the keyboard alone signs in and reaches Save & Apply,
pages fit 1280 and 390 pixels wide without scrolling sideways. Screenshots are kept (in
$CONSOLE_SCREENSHOTS when set, which is how docs/console-*.png are made)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from google.protobuf.duration_pb2 import Duration
from playwright.sync_api import Browser, Page, expect

from registry_testkit.images import ImageBuilder, push
from tests.clients.livestack import ADMIN_TOKEN, wait_for
from tests.console.conftest import QA_PASSWORD, QA_USER, Env, public_key_pem, sign_in

pytestmark = pytest.mark.registry

UNLABELLED = """() => [...document.querySelectorAll('input, select, textarea, button')]
  .filter(el => el.type !== 'hidden' && el.offsetParent !== null)
  .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                && !(el.tagName === 'BUTTON' && el.innerText.trim()))
  .map(el => el.outerHTML.slice(0, 120))"""
SIDEWAYS = "() => document.documentElement.scrollWidth - window.innerWidth"


@pytest.fixture(scope="module")
def populated(env: Env) -> dict[str, str]:
    """Registries, a policy and one run, so that every page has something to show."""
    from mirror.v1 import common_pb2, policy_pb2

    with env.client() as c:
        c.transfers.create_endpoint(name="dev", url=env.dev.url)
        c.transfers.create_endpoint(name="qa", url=env.qa.url, username=QA_USER,
                                    secret=QA_PASSWORD, ca_pem=env.qa.ca_pem)
        policy = c.policies.create(policy=policy_pb2.Policy(
            name="promote-stable",
            source=policy_pb2.PolicySource(endpoint="dev", repository="dev/website"),
            target=common_pb2.Target(endpoint="qa", repository="qa/website"),
            rule='tag endswith "stable"',
            tag_template="%Y%m%d-%H%M%S", enabled=True,
        ))
        push(ImageBuilder(env.tmp / "img").image("1.4-stable"), env.dev, "dev/website")
        c.policies.create_trusted_key(name="ci", public_key_pem=public_key_pem()[0])
        # A pull mirror on a schedule: its page has a polls table too.
        scheduled = c.policies.create(policy=policy_pb2.Policy(
            name="pull-website",
            source=policy_pb2.PolicySource(endpoint="dev", repository="dev/website"),
            target=common_pb2.Target(endpoint="qa", repository="pulled/website"),
            rule="true", enabled=True,
            trigger=policy_pb2.PolicyTrigger(
                schedule=policy_pb2.ScheduleTrigger(interval=Duration(seconds=2))
            ),
        ))
        wait_for("a poll", lambda: c.gateway.get_policy_status(scheduled.id).last_poll.id)
    return {"policy": policy.id, "scheduled": scheduled.id}


PAGES = [
    ("registries", "/registries"),
    ("registry", "/registries/qa"),
    ("registry-new", "/registries/new"),
    ("registry-edit", "/registries/qa/edit"),
    ("repository", "/repositories/dev/dev/website"),
    ("new-mirror", "/mirrors/new?endpoint=dev&repository=dev/website"),
    ("policies", "/policies"),
    ("keys", "/keys"),
]


def _shots_dir(env: Env) -> Path:
    out = Path(os.environ.get("CONSOLE_SCREENSHOTS") or env.tmp / "screenshots")
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.mark.parametrize("width", [1280, 390])
def test_pages_fit_the_width_and_label_every_control(
    browser: Browser, env: Env, populated: dict[str, str], width: int
) -> None:
    ctx = browser.new_context(viewport={"width": width, "height": 900})
    ctx.set_default_timeout(20_000)
    page = ctx.new_page()
    # A Content-Security-Policy violation or a script error shows up as a console error.
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    try:
        page.goto(env.base + "/login")
        assert page.evaluate(UNLABELLED) == []
        sign_in(page, env)
        pages = [*PAGES, ("policy", f"/policies/{populated['policy']}"),
                 ("policy-edit", f"/policies/{populated['policy']}/edit"),
                 ("scheduled", f"/policies/{populated['scheduled']}")]
        for name, url in pages:
            page.goto(env.base + url)
            expect(page.locator("main h1").first).to_be_visible()
            if name == "new-mirror":
                page.locator("#rule").fill('tag endswith "stable" and critcal_vulns <= 3')
                expect(page.locator("#rule-check li.rule-error")).to_have_count(1)
            if name == "registry":
                page.get_by_label("Repository to check").fill("qa/website")
                page.get_by_role("button", name="Connect").click()
                expect(page.locator("#connect-result li.step.ok")).to_have_count(5)
            if name in ("registry-new", "registry-edit"):
                # The advanced settings too: their controls must be labelled and fit.
                advanced = page.locator("details", has_text="Show advanced settings")
                if advanced.get_attribute("open") is None:
                    page.get_by_text("Show advanced settings").click()
                expect(page.get_by_label("Skip TLS verification")).to_be_visible()
            if name == "policy-edit":
                expect(page.locator("#rule-check")).to_contain_text("The rule is valid")
            if name == "scheduled":
                expect(page.locator("table.polls tr.poll").first).to_be_visible()
            if name == "policy":
                expect(page.locator("tr.run .state").first).to_have_text("SUCCEEDED",
                                                                        timeout=60_000)
            page.screenshot(path=str(_shots_dir(env) / f"console-{name}-{width}.png"),
                            full_page=True)
            assert page.evaluate(UNLABELLED) == [], name
            assert page.evaluate(SIDEWAYS) <= 0, f"{name} scrolls sideways at {width}px"
            assert problems == [], name
    finally:
        ctx.close()


def test_the_keyboard_alone_signs_in_and_reaches_save_and_apply(
    page: Page, env: Env, populated: dict[str, str]
) -> None:
    page.goto(env.base + "/login")
    # The token field has the focus; Enter submits.
    expect(page.get_by_label("API token")).to_be_focused()
    page.keyboard.type(ADMIN_TOKEN)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Registries")).to_be_visible()
    page.goto(env.base + "/mirrors/new?endpoint=dev&repository=dev/website")
    expect(page.locator("#rule-check")).to_contain_text("The rule is valid")
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    reached: list[str] = []
    for _ in range(80):
        page.keyboard.press("Tab")
        label = page.evaluate(
            "() => { const el = document.activeElement;"
            " return ['A', 'BUTTON'].includes(el.tagName) ? el.innerText : el.id; }"
        )
        reached.append(label)
        if label == "Save & Apply":
            break
    assert reached[-1] == "Save & Apply", reached
    for control in ("direction-push", "registry", "remote_repository", "rule", "name"):
        assert control in reached, control
