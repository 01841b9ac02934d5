"""The seed's flow in a real browser: registries (CA, password, Connect), the repository's
Mirrors tab, New mirror -> Save & Apply, the image in QA with the same digest, a push that
the policy mirrors with a timestamp tag, and no password in any page; a registry added with
"Skip TLS verification" (and first refused with its password typed)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from playwright.sync_api import BrowserContext, Page, Response, expect

from registry_testkit.images import ImageBuilder, digest_of, list_tags, push
from registry_testkit.registry import RegistryOptions, start_registry
from tests.console.conftest import QA_PASSWORD, QA_USER, Env, sign_in

pytestmark = pytest.mark.registry

TIMESTAMP_TAG = re.compile(r"^\d{8}-\d{6}$")


@pytest.fixture(scope="module")
def images(env: Env) -> ImageBuilder:
    return ImageBuilder(env.tmp / "images")


@dataclass
class Seen:
    """An HTML body the browser received (a page or an htmx fragment) and its status."""

    url: str
    status: int
    body: str


@pytest.fixture
def pages_seen(context: BrowserContext) -> Iterator[list[Seen]]:
    """Every HTML body the browser received, whatever its status: a refused form (400) is
    as likely as a page to echo what was typed."""
    seen: list[Seen] = []

    def keep(resp: Response) -> None:
        # A redirect has no body to read.
        if "text/html" in resp.headers.get("content-type", "") and not 300 <= resp.status < 400:
            seen.append(Seen(resp.url, resp.status, resp.text()))

    context.on("response", keep)
    yield seen


def fill_registry_form(page: Page, name: str, url: str, *, username: str = "",
                       password: str = "", ca_file: str = "", skip_tls: bool = False) -> None:
    """The Add registry form, filled in (not sent)."""
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_label("Registry URL").fill(url)
    if username:
        page.get_by_label("Username").fill(username)
    if password:
        page.get_by_label("Password or access token").fill(password)
    if ca_file or skip_tls:
        advanced = page.locator("details", has_text="Show advanced settings")
        if advanced.get_attribute("open") is None:
            page.get_by_text("Show advanced settings").click()
    if ca_file:
        page.get_by_label("or upload the CA certificate").set_input_files(ca_file)
    if skip_tls:
        page.get_by_label("Skip TLS verification").check()


def add_registry(page: Page, env: Env, name: str, url: str, *, username: str = "",
                 password: str = "", ca_file: str = "") -> None:
    page.goto(env.base + "/registries")
    page.get_by_role("link", name="Add registry").click()
    fill_registry_form(page, name, url, username=username, password=password, ca_file=ca_file)
    page.get_by_role("button", name="Add registry").click()
    expect(page.get_by_role("heading", name=f"Registry {name}")).to_be_visible()


def test_seed_flow_new_mirror_save_and_apply_then_push(
    page: Page, env: Env, images: ImageBuilder, pages_seen: list[Seen]
) -> None:
    stable = images.image("1.0-stable", layers=[20_000, 5_000])
    push(stable, env.dev, "dev/website")
    ca_path = env.tmp / "qa-ca.pem"
    ca_path.write_text(env.qa.ca_pem)

    sign_in(page, env)
    add_registry(page, env, "dev", env.dev.url)
    add_registry(page, env, "qa", env.qa.url, username=QA_USER, password=QA_PASSWORD,
                 ca_file=str(ca_path))
    expect(page.get_by_text("password or token stored")).to_be_visible()
    expect(page.get_by_text("private CA")).to_be_visible()

    # Connect: the five steps, each passing (push permission on qa/website).
    page.get_by_label("Repository to check").fill("qa/website")
    page.get_by_role("button", name="Connect").click()
    steps = page.locator("#connect-result li.step")
    expect(steps).to_have_count(5)
    expect(page.locator("#connect-result li.step.ok")).to_have_count(5)
    expect(steps.nth(1)).to_contain_text("TLS verified")
    expect(steps.nth(4)).to_contain_text("Push allowed")
    expect(page.get_by_role("status")).to_have_text("Connected: every check passed.")

    # The repository page of dev/website, its Mirrors tab, New mirror.
    page.goto(env.base + "/registries/dev")
    page.get_by_label("Open a repository").fill("dev/website")
    page.get_by_role("button", name="Open").click()
    expect(page.get_by_role("heading", name="dev/website")).to_be_visible()
    expect(page.get_by_role("link", name="Mirrors", exact=True).first).to_be_visible()
    page.get_by_role("link", name="New mirror").click()

    expect(page.get_by_label("Push to remote registry")).to_be_checked()
    page.locator("#registry").select_option("qa")
    expect(page.locator("#new-registry")).to_be_hidden()
    page.get_by_label("Remote repository").fill("qa/website")
    page.get_by_role("button", name="Connect").click()
    expect(page.locator("#connect-result li.step.ok")).to_have_count(5)
    # The default criterion is the seed's: Tag name ends with "stable".
    expect(page.locator("#rule")).to_have_value('tag endswith "stable"')
    expect(page.locator("#rule-check")).to_contain_text("The rule is valid")
    page.get_by_label("Use a tag template").check()
    page.get_by_label("Tag template", exact=True).fill("%Y%m%d-%H%M%S")
    expect(page.locator("#tag-preview-value")).to_have_text(re.compile(r"^\d{8}-\d{6}$"))
    page.get_by_label("Mirror name").fill("promote-stable")
    page.get_by_role("button", name="Save & Apply").click()

    expect(page.get_by_role("heading", name="Mirror promote-stable")).to_be_visible()
    expect(page.get_by_text("Applied: 1 of 1 tags matched.")).to_be_visible()
    # The run reaches SUCCEEDED on the page by itself (server-sent events), no reload.
    first = page.locator("tr.run", has_text="1.0-stable")
    expect(first.locator(".state")).to_have_text("SUCCEEDED", timeout=60_000)
    expect(first).to_contain_text(" on qa")
    dest = first.locator("code.dest").inner_text()
    assert dest.startswith("qa/website:")
    tag = dest.split(":", 1)[1]
    assert TIMESTAMP_TAG.match(tag), dest
    assert digest_of(env.qa, "qa/website", tag, QA_USER, QA_PASSWORD) == stable.digest

    # A push of another stable tag is mirrored too, and the page shows it live.
    newer = images.image("1.1-stable", layers=[30_000])
    push(newer, env.dev, "dev/website")
    second = page.locator("tr.run", has_text="1.1-stable")
    expect(second.locator(".state")).to_have_text("SUCCEEDED", timeout=60_000)
    tag2 = second.locator("code.dest").inner_text().rsplit(":", 1)[1]
    assert TIMESTAMP_TAG.match(tag2)
    assert digest_of(env.qa, "qa/website", tag2, QA_USER, QA_PASSWORD) == newer.digest
    assert {tag, tag2} <= set(list_tags(env.qa, "qa/website", QA_USER))

    # The repository's Mirrors tab lists the policy with its last status.
    page.goto(env.base + "/repositories/dev/dev/website")
    row = page.locator("tr[data-policy=promote-stable]")
    expect(row).to_contain_text("qa/website on qa")
    expect(row.locator(".state")).to_have_text("SUCCEEDED")

    # Pages visited, including the forms that took it: the password is never sent back.
    page.goto(env.base + "/registries/qa/edit")
    expect(page.get_by_label("Password or access token")).to_have_value("")
    assert pages_seen
    assert not [s.url for s in pages_seen if QA_PASSWORD in s.body]


def test_skip_tls_verification_connects_to_a_registry_without_its_ca(
    page: Page, env: Env, pages_seen: list[Seen]
) -> None:
    """A TLS registry whose CA the stack does not know, added with "Skip TLS verification":
    Connect's TLS step is skipped, not failed, and every other step passes; the endpoint is
    stored so and the list says it is not verified. The form is first refused (a bad name)
    with the password typed: the 400 page does not hold it either."""
    password = "self-signed-" + "3f7c90a1d2e4b658"
    opts = RegistryOptions(tls=True, htpasswd_users={QA_USER: password})
    with start_registry(opts, env.tmp / "selfsigned") as registry:
        sign_in(page, env)
        page.goto(env.base + "/registries/new")
        fill_registry_form(page, "not a name!", registry.url, username=QA_USER,
                           password=password, skip_tls=True)
        page.get_by_role("button", name="Add registry").click()
        expect(page.get_by_role("alert").first).to_be_visible()
        # Refused: what was typed is kept, the password is not.
        expect(page.get_by_label("Registry URL")).to_have_value(registry.url)
        expect(page.get_by_label("Skip TLS verification")).to_be_checked()
        expect(page.get_by_label("Password or access token")).to_have_value("")
        fill_registry_form(page, "selfsigned", registry.url, password=password)
        page.get_by_role("button", name="Add registry").click()
        expect(page.get_by_role("heading", name="Registry selfsigned")).to_be_visible()
        expect(page.locator(".facts")).to_contain_text("verification skipped")

        page.get_by_label("Repository to check").fill("team/app")
        page.get_by_role("button", name="Connect").click()
        result = page.locator("#connect-result")
        expect(result.locator("li.step.pending")).to_have_count(0, timeout=30_000)
        expect(result.locator("li.step.failed")).to_have_count(0)
        expect(result.locator("#step-tls")).to_have_class(re.compile(r"\bskipped\b"))
        expect(result.locator("#step-tls")).to_contain_text("not verified")
        # Reachable, authenticated (the password), pull and push allowed.
        expect(result.locator("li.step.ok")).to_have_count(4)
        expect(page.locator("#connect-summary")).to_have_text("Connected: every check passed.")

        with env.client() as c:
            stored = c.transfers.get_endpoint("selfsigned")
        assert stored.insecure_skip_verify and not stored.ca_pem
        assert stored.has_secret and stored.username == QA_USER

        page.goto(env.base + "/registries")
        row = page.locator("tr", has=page.get_by_role("link", name="selfsigned", exact=True))
        expect(row.locator("td[data-label=TLS]")).to_have_text("not verified")

    assert 400 in {s.status for s in pages_seen}  # the refused form was looked at too
    assert not [s.url for s in pages_seen if password in s.body]
