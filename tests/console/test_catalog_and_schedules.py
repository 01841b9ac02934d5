"""A registry's real catalog (paged, filtered, refused), a scheduled pull mirror's polls and
its runs' cause, action and previous digest, and the trusted keys page, in a real browser."""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator

import pytest
from google.protobuf.duration_pb2 import Duration
from mirror.v1 import common_pb2, gateway_pb2, policy_pb2
from playwright.sync_api import Page, expect

from registry_testkit.faultproxy import FaultProxy
from registry_testkit.images import ImageBuilder, push
from tests.clients.livestack import READ_TOKEN, wait_for
from tests.console.conftest import (
    QA_PASSWORD,
    QA_USER,
    Env,
    public_key_pem,
    sign_in,
    standalone_console,
)

pytestmark = pytest.mark.registry


@pytest.fixture(scope="module")
def images(env: Env) -> ImageBuilder:
    return ImageBuilder(env.tmp / "images")


@pytest.fixture(scope="module", autouse=True)
def endpoints(env: Env) -> None:
    with env.client() as c:
        c.transfers.create_endpoint(name="dev", url=env.dev.url)
        c.transfers.create_endpoint(name="qa", url=env.qa.url, username=QA_USER,
                                    secret=QA_PASSWORD, ca_pem=env.qa.ca_pem)


@pytest.fixture(scope="module")
def catalog(env: Env, images: ImageBuilder) -> list[str]:
    names = ["cat/a", "cat/b", "cat/c"]
    image = images.image("1.0", layers=[1_000])
    for name in names:
        push(image, env.dev, name)
    return names


def test_the_catalog_pages_in_name_order_and_filters_by_prefix(
    page: Page, env: Env, catalog: list[str]
) -> None:
    with standalone_console(env, "--repositories-per-page", "2") as base:
        sign_in(page, env, base=base)
        page.goto(base + "/registries/dev")
        page.get_by_label("Names starting with").fill("cat/")
        page.get_by_role("button", name="Filter").click()
        listed = page.locator("#catalog li")
        expect(listed).to_have_text(["cat/a", "cat/b"])
        page.get_by_role("link", name="More repositories").click()
        expect(listed).to_have_text(["cat/c"])
        expect(page.get_by_role("link", name="More repositories")).to_have_count(0)
        # Each name opens the repository's Mirrors tab.
        listed.get_by_role("link", name="cat/c").click()
        expect(page.get_by_role("heading", name="cat/c")).to_be_visible()
        page.goto(base + "/registries/dev?prefix=nothing-like-this/")
        expect(page.locator("#repositories")).to_contain_text(
            "The catalog lists no repository starting with nothing-like-this/"
        )
    # The blocking SDK pages the same catalog (the console uses its asyncio twin).
    with env.client() as c:
        assert list(c.transfers.iter_repositories("dev", prefix="cat/", page_size=1)) == catalog
        steps = [ch.step for ch in c.transfers.stream_connection_test("dev", repository="cat/a")]
        assert len(steps) == len(set(steps)) >= 4


def test_a_refused_catalog_says_why_and_the_mirrors_names_remain(
    page: Page, env: Env, catalog: list[str]
) -> None:
    with FaultProxy(env.dev.url) as proxy, env.client() as c:
        # An account without catalog access (Harbor, GitLab and Quay refuse it to most).
        proxy.status(r"^/v2/_catalog", 403, times=None)
        c.transfers.create_endpoint(name="nocatalog", url=proxy.url)
        c.policies.create(policy=policy_pb2.Policy(
            name="from-nocatalog",
            source=policy_pb2.PolicySource(endpoint="nocatalog", repository="cat/a"),
            target=common_pb2.Target(endpoint="qa", repository="copies/a"),
            rule='tag == "never"', enabled=True,
        ))
        sign_in(page, env, token=READ_TOKEN)
        page.goto(env.base + "/registries/nocatalog")
        error = page.locator("#catalog-error")
        expect(error).to_contain_text("The registry does not list its repositories")
        expect(error).to_contain_text("403")
        expect(page.locator("#mirrored").get_by_role("link", name="cat/a")).to_be_visible()
        assert proxy.requests("GET", r"^/v2/_catalog")
        # The same read-only session sees the real catalog of a registry that lists it.
        page.goto(env.base + "/registries/dev?prefix=cat/")
        expect(page.locator("#catalog li")).to_have_text(catalog)


@pytest.fixture(scope="module")
def scheduled(env: Env, images: ImageBuilder) -> Iterator[dict[str, str]]:
    """A pull mirror polling dev's up/app every second, deletions as a dry run: 1.0 and 2.0
    copied, then 1.0 moved upstream (copied again over the old digest) and 2.0 deleted
    upstream (a dry-run delete)."""
    first = push(images.image("1.0", layers=[1_100]), env.dev, "up/app")
    second = push(images.image("2.0", layers=[2_100]), env.dev, "up/app")
    with env.client() as c:
        policy = c.policies.create(policy=policy_pb2.Policy(
            name="pull-up-app",
            source=policy_pb2.PolicySource(endpoint="dev", repository="up/app"),
            target=common_pb2.Target(endpoint="qa", repository="pulled/app"),
            rule="true", tag_template="%n", enabled=True,
            trigger=policy_pb2.PolicyTrigger(
                schedule=policy_pb2.ScheduleTrigger(interval=Duration(seconds=1))
            ),
            deletions=policy_pb2.DELETION_MODE_DRY_RUN,
        ))

        def runs(states: tuple[str, ...] = ()) -> list[gateway_pb2.Run]:
            return list(c.gateway.list_runs(policy_id=policy.id, page_size=100,
                                            states=states).runs)

        wait_for("both tags copied", lambda: len(runs(("succeeded",))) >= 2)
        moved = push(images.image("1.0", layers=[1_200]), env.dev, "up/app")
        wait_for("1.0 copied again", lambda: [
            r for r in runs(("succeeded",)) if r.source_digest == moved
        ])
        req = urllib.request.Request(f"{env.dev.url}/v2/up/app/manifests/{second}",
                                     method="DELETE")
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 202
        wait_for("the dry-run deletion of 2.0", lambda: [
            r for r in runs() if r.action == gateway_pb2.Run.ACTION_DELETE_DRY_RUN
        ])
        yield {"id": policy.id, "first": first, "second": second, "moved": moved}


def test_a_scheduled_mirror_shows_next_and_last_poll_and_its_polls(
    page: Page, env: Env, scheduled: dict[str, str]
) -> None:
    sign_in(page, env)
    page.goto(env.base + f"/policies/{scheduled['id']}")
    expect(page.locator("#next-poll")).to_contain_text("next poll 20")
    expect(page.locator("#last-poll")).to_contain_text("tags listed")
    expect(page.locator("table.polls tr.poll").first).to_be_visible()
    # The Mirrors tab of the repository it writes (pull from a remote registry).
    page.locator("p.crumbs").get_by_role("link", name="pulled/app").click()
    row = page.locator("tr[data-policy=pull-up-app]")
    expect(row.locator(".next-poll")).to_contain_text("next poll 20")
    # The last poll may be under way (polls run every second here): then it says since when.
    expect(row.locator(".last-poll")).to_contain_text(
        re.compile(r"last poll (running since )?20\d\d-"))
    page.goto(env.base + "/policies")
    expect(page.locator("td", has_text="polls every 1s").locator(".next-poll")).to_be_visible()


def test_runs_show_their_cause_action_and_previous_digest(
    page: Page, env: Env, scheduled: dict[str, str]
) -> None:
    sign_in(page, env)
    page.goto(env.base + f"/policies/{scheduled['id']}")
    dry = page.locator("tr.run[data-action='dry-run delete']")
    expect(dry).to_have_count(1)
    expect(dry).to_contain_text("up/app:2.0")
    expect(dry.locator(".cause")).to_contain_text("scheduled poll")
    moved = page.locator("tr.run", has=page.locator(f"code:text-is('{scheduled['moved']}')"))
    expect(moved.locator(".action")).to_have_text("copy")
    expect(moved.locator(".previous")).to_contain_text(f"was {scheduled['first']}")
    expect(page.locator("tr.run[data-action=copy] .cause").first).to_contain_text(
        "scheduled poll"
    )


def test_trusted_keys_add_from_pem_delete_and_read_only_sees_no_write(
    page: Page, env: Env
) -> None:
    pem, fingerprint = public_key_pem()
    sign_in(page, env)
    page.get_by_role("link", name="Trusted keys").click()
    expect(page.get_by_role("heading", name="Trusted keys")).to_be_visible()
    # Not a key: refused with the reason, the name kept.
    page.get_by_label("Key name").fill("ci")
    page.get_by_label("Public key (PEM").fill("-----BEGIN PUBLIC KEY-----\nnope\n")
    page.get_by_role("button", name="Add key").click()
    expect(page.get_by_role("alert")).to_be_visible()
    expect(page.get_by_label("Key name")).to_have_value("ci")
    page.get_by_label("Public key (PEM").fill(pem)
    page.get_by_role("button", name="Add key").click()
    row = page.locator("tr[data-key=ci]")
    expect(row).to_contain_text("ed25519")
    expect(row.locator("code")).to_have_text(fingerprint)
    with env.client() as c:
        assert c.policies.get_trusted_key("ci").fingerprint == fingerprint
        user = c.policies.create(policy=policy_pb2.Policy(
            name="needs-ci", source=policy_pb2.PolicySource(endpoint="dev", repository="s/app"),
            target=common_pb2.Target(endpoint="qa", repository="s/app"),
            rule='signed_by "ci"', enabled=True,
        ))
    # Refused while a rule names it, saying which.
    page.get_by_role("button", name="Delete key ci").click()
    expect(page.get_by_role("alert")).to_contain_text("needs-ci")
    expect(page.locator("tr[data-key=ci]")).to_be_visible()

    ro = page.context.browser.new_context()  # type: ignore[union-attr]
    try:
        ro_page = ro.new_page()
        sign_in(ro_page, env, token=READ_TOKEN)
        ro_page.goto(env.base + "/keys")
        expect(ro_page.locator("tr[data-key=ci]")).to_contain_text(fingerprint)
        expect(ro_page.get_by_role("button", name="Add key")).to_have_count(0)
        expect(ro_page.get_by_role("button", name="Delete key ci")).to_have_count(0)
        csrf = ro_page.locator("form.signout input[name=_csrf]").get_attribute("value") or ""
        for url, form in [("/keys/ci/delete", {}),
                          ("/keys", {"name": "forged", "public_key_pem": pem})]:
            resp = ro_page.request.post(env.base + url, form={**form, "_csrf": csrf})
            assert resp.status == 403, url
    finally:
        ro.close()

    with env.client() as c:
        c.policies.delete(user.id)
        assert [k.name for k in c.policies.iter_trusted_keys()] == ["ci"]
    page.get_by_role("button", name="Delete key ci").click()
    expect(page.locator("tr[data-key=ci]")).to_have_count(0)
    expect(page.get_by_text("No trusted key yet.")).to_be_visible()
