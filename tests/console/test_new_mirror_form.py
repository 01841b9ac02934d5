"""New mirror's live parts in a real browser: the criteria rows write the rule, rule errors at
their line and column as one types, the tag template preview, a refused Save, a new registry
made from the form (pull direction); and the policy page's actions."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from mirror.v1 import transfer_pb2
from playwright.sync_api import Page, expect

from registry_testkit.faultproxy import FaultProxy
from registry_testkit.images import ImageBuilder, push
from registry_testkit.registry import RegistryOptions, RegistryProcess, start_registry
from tests.clients.livestack import wait_for
from tests.console.conftest import QA_PASSWORD, QA_USER, Env, sign_in, standalone_console

pytestmark = pytest.mark.registry


@pytest.fixture(scope="module", autouse=True)
def dev_endpoint(env: Env) -> None:
    with env.client() as c:
        c.transfers.create_endpoint(name="dev", url=env.dev.url)
        c.transfers.create_endpoint(name="qa", url=env.qa.url, username=QA_USER,
                                    secret=QA_PASSWORD, ca_pem=env.qa.ca_pem)


def open_form(page: Page, env: Env) -> None:
    sign_in(page, env)
    page.goto(env.base + "/mirrors/new?endpoint=dev&repository=dev/website")
    expect(page.get_by_role("heading", name="New mirror")).to_be_visible()
    expect(page.locator("#rule-check")).to_contain_text("The rule is valid")


def test_a_bad_rule_shows_its_error_at_its_line_and_column(page: Page, env: Env) -> None:
    open_form(page, env)
    rule = 'tag endswith "stable" and critcal_vulns <= 3'
    page.locator("#rule").fill(rule)
    error = page.locator("#rule-check li.rule-error").first
    expect(error).to_have_attribute("data-column", str(rule.index("critcal") + 1))
    expect(error).to_have_attribute("data-line", "1")
    expect(error).to_contain_text(f"line 1, column {rule.index('critcal') + 1}")
    expect(error).to_contain_text("critical_vulns")
    # The caret sits under the offending text.
    caret = error.locator("pre.caret").inner_text().split("\n")
    assert caret[1].index("^") == rule.index("critcal")

    two_lines = 'tag endswith "stable" and\n  critical_vulns <= '
    page.locator("#rule").fill(two_lines)
    with env.client() as c:
        expected = c.policies.validate_rule(two_lines).errors[0]
    error = page.locator("#rule-check li.rule-error").first
    expect(error).to_have_attribute("data-line", "2")
    expect(error).to_have_attribute("data-column", str(expected.column))

    page.locator("#rule").fill('tag endswith "stable" and critical_vulns <= 3')
    expect(page.locator("#rule-check")).to_contain_text("The rule is valid")
    expect(page.locator("#rule-check")).to_contain_text("critical_vulns")


# Classes htmx keeps on content it has just swapped in, until its attributes are processed
# and settled: a change made before that reaches no handler.
SWAPPING = re.compile(r"\bhtmx-(added|settling|swapping)\b")


# The Attribute select's choices, in order: Tag name, Component name, Vulnerabilities
# critical / major / minor / all, License.
ATTRIBUTES = ["Tag name", "Component name", "Critical vulnerabilities", "Major vulnerabilities",
              "Minor vulnerabilities", "All vulnerabilities", "License"]


def test_criteria_rows_write_the_rule(page: Page, env: Env) -> None:
    open_form(page, env)
    rows = page.locator("#criteria .criterion")
    expect(rows).to_have_count(1)
    first = rows.nth(0)
    # The (and DTR's) attributes, no more, no fewer.
    expect(first.get_by_label("Attribute").locator("option")).to_have_text(ATTRIBUTES)
    first.get_by_label("Attribute").select_option("critical_vulns")
    # The row comes back with the number operators.
    expect(first.get_by_label("Operator").locator("option")).to_have_count(6)
    first.get_by_label("Operator").select_option(label="<=")
    first.get_by_label("Value").fill("3")
    expect(page.locator("#rule")).to_have_value("critical_vulns <= 3")

    page.get_by_role("button", name="Add criterion").click()
    expect(rows).to_have_count(2)
    second = rows.nth(1)
    expect(second).not_to_have_class(SWAPPING)  # htmx has wired the new row's controls
    second.get_by_label("Operator").select_option(label="ends with")
    second.get_by_label("Value").fill("stable")
    expect(page.locator("#rule")).to_have_value('critical_vulns <= 3 and tag endswith "stable"')
    page.get_by_label("rows combined with").select_option("or")
    expect(page.locator("#rule")).to_have_value('critical_vulns <= 3 or tag endswith "stable"')

    page.get_by_role("button", name="Add criterion").click()
    expect(rows).to_have_count(3)
    third = rows.nth(2)
    expect(third).not_to_have_class(SWAPPING)
    third.get_by_label("Attribute").select_option("license")
    expect(third.get_by_label("Operator").locator("option")).to_have_count(2)
    third.get_by_label("Operator").select_option(label="is not one of")
    third.get_by_label("Value").fill("GPL-3.0-only, AGPL-3.0-only")
    expect(page.locator("#rule")).to_have_value(
        'critical_vulns <= 3 or tag endswith "stable" or '
        'license not in ["GPL-3.0-only", "AGPL-3.0-only"]'
    )
    first.get_by_role("button", name="Remove this criterion").click()
    expect(rows).to_have_count(2)
    expect(page.locator("#rule")).to_have_value(
        'tag endswith "stable" or license not in ["GPL-3.0-only", "AGPL-3.0-only"]'
    )

    page.get_by_role("button", name="Add criterion").click()
    expect(rows).to_have_count(3)
    major = rows.nth(2)
    expect(major).not_to_have_class(SWAPPING)
    major.get_by_label("Attribute").select_option(label="Major vulnerabilities")
    # The row comes back with the number operators (the string ones are as many).
    expect(major.get_by_label("Operator").locator("option")).to_have_text(
        [">=", ">", "=", "!=", "<=", "<"])
    expect(major).not_to_have_class(SWAPPING)
    major.get_by_label("Operator").select_option(label="<")
    major.get_by_label("Value").fill("10")
    page.get_by_label("rows combined with").select_option("and")
    rule = ('tag endswith "stable" and license not in ["GPL-3.0-only", "AGPL-3.0-only"] '
            'and major_vulns < 10')
    expect(page.locator("#rule")).to_have_value(rule)
    expect(page.locator("#rule-check")).to_contain_text("The rule is valid")
    expect(page.locator("#rule-check")).to_contain_text("major_vulns")


def test_tag_template_preview(page: Page, env: Env) -> None:
    open_form(page, env)
    expect(page.locator("#tag-preview-value")).to_have_text("1.4-stable")
    page.get_by_label("Use a tag template").check()
    template = page.get_by_label("Tag template", exact=True)
    template.fill("%Y-%n")
    year = datetime.now(UTC).year
    expect(page.locator("#tag-preview-value")).to_have_text(f"{year}-1.4-stable")
    page.get_by_label("Example tag").fill("2.0")
    expect(page.locator("#tag-preview-value")).to_have_text(f"{year}-2.0")
    template.fill("%Y%%")
    expect(page.locator("#tag-preview [role=alert]")).to_be_visible()
    expect(page.locator("#tag-preview-value")).to_have_count(0)


def test_a_refused_save_keeps_the_form_and_names_the_error(page: Page, env: Env) -> None:
    open_form(page, env)
    page.locator("#registry").select_option("qa")
    page.get_by_label("Remote repository").fill("qa/website")
    page.locator("#rule").fill("tag endswith")
    page.get_by_label("Mirror name").fill("broken")
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.get_by_role("alert").first).to_contain_text("rule")
    expect(page.get_by_label("Mirror name")).to_have_value("broken")
    expect(page.locator("#rule")).to_have_value("tag endswith")
    with env.client() as c:
        assert "broken" not in [p.name for p in c.policies.iter()]


@pytest.fixture(scope="module")
def upstream(env: Env) -> Iterator[RegistryProcess]:
    """A third registry (TLS with a private CA, a password), not registered yet."""
    opts = RegistryOptions(tls=True, htpasswd_users={QA_USER: QA_PASSWORD})
    with start_registry(opts, env.tmp / "upstream") as reg:
        yield reg


def test_pull_mirror_from_a_new_registry_made_in_the_form(
    page: Page, env: Env, upstream: RegistryProcess
) -> None:
    open_form(page, env)
    page.get_by_label("Pull from remote registry").check()
    page.locator("#registry").select_option("__new__")
    expect(page.locator("#new-registry")).to_be_visible()
    page.get_by_label("Name of the new registry").fill("upstream")
    page.locator("#new_url").fill(upstream.url)
    page.locator("#new_username").fill(QA_USER)
    page.locator("#new_secret").fill(QA_PASSWORD)
    page.locator("#new-registry").get_by_text("Show advanced settings").click()
    page.locator("#new_ca_pem").fill(upstream.ca_pem)
    page.get_by_label("Remote repository").fill("qa/website")
    page.get_by_role("button", name="Connect").click()
    # Pull direction: push permission is not checked on the remote.
    expect(page.locator("#connect-result li.step")).to_have_count(5)
    expect(page.locator("#connect-result li.step.ok")).to_have_count(4)
    expect(page.locator("#connect-result li.step").nth(4)).to_contain_text("skipped")
    page.get_by_label("Mirror name").fill("pull-upstream")
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.get_by_role("heading", name="Mirror pull-upstream")).to_be_visible()
    with env.client() as c:
        policy = next(p for p in c.policies.iter() if p.name == "pull-upstream")
        assert (policy.source.endpoint, policy.source.repository) == ("upstream", "qa/website")
        assert (policy.target.endpoint, policy.target.repository) == ("dev", "dev/website")
        stored = c.transfers.get_endpoint("upstream")
        assert stored.has_secret and stored.username == QA_USER
    page.goto(env.base + "/repositories/dev/dev/website")
    expect(page.locator("tr[data-policy=pull-upstream]")).to_contain_text("qa/website on upstream")
    assert QA_PASSWORD not in page.content()


def test_policy_page_disable_enable_explain_and_delete(
    page: Page, env: Env, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with env.client() as c:
        c.policies.create(policy=_policy("page-actions"))
    sign_in(page, env)
    page.goto(env.base + "/policies")
    page.get_by_role("link", name="page-actions").click()
    expect(page.get_by_role("heading", name="Mirror page-actions")).to_be_visible()
    expect(page.get_by_text("No run yet.")).to_be_visible()
    # A push that does not match: the run says why, live.
    images = ImageBuilder(tmp_path_factory.mktemp("img"))
    push(images.image("2.0-dev"), env.dev, "dev/actions")
    run = page.locator("tr.run", has_text="2.0-dev")
    expect(run.locator(".state")).to_have_text("NOT_MATCHED", timeout=60_000)
    # The explanation names the clause that failed and the value it saw.
    expect(run.locator(".explanation")).to_contain_text('tag endswith "stable"')
    expect(run.locator(".explanation")).to_contain_text('"2.0-dev"')

    page.get_by_role("button", name="Disable").click()
    expect(page.get_by_role("button", name="Enable")).to_be_visible()
    with env.client() as c:
        assert not next(p for p in c.policies.iter() if p.name == "page-actions").enabled
    page.get_by_role("button", name="Enable").click()
    expect(page.get_by_role("button", name="Disable")).to_be_visible()

    page.get_by_role("link", name="Delete").click()
    expect(page.get_by_role("heading", name="Delete mirror page-actions?")).to_be_visible()
    page.get_by_role("button", name="Delete").click()
    expect(page).to_have_url(re.compile(r"/policies$"))
    with env.client() as c:
        assert "page-actions" not in [p.name for p in c.policies.iter()]


def _policy(name: str):  # type: ignore[no-untyped-def]
    from mirror.v1 import common_pb2, policy_pb2

    return policy_pb2.Policy(
        name=name, source=policy_pb2.PolicySource(endpoint="dev", repository="dev/actions"),
        target=common_pb2.Target(endpoint="qa", repository="qa/actions"),
        rule='tag endswith "stable"', enabled=True,
    )


def test_policy_page_shows_transfer_progress_live(
    page: Page, env: Env, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A blob held back by a proxy keeps the run RUNNING: the page shows its transfer's
    progress, then SUCCEEDED, with no reload (server-sent events)."""
    from mirror.v1 import common_pb2, policy_pb2

    images = ImageBuilder(tmp_path_factory.mktemp("big"))
    image = images.image("3.0-stable", layers=[64_000, 900_000])
    push(image, env.dev, "dev/big")
    big_blob = max(image.blobs, key=lambda b: b.size)
    with FaultProxy(env.dev.url) as proxy, env.client() as c:
        proxy.delay(rf"/blobs/{re.escape(big_blob.digest)}$", seconds=4, times=1, method="GET")
        c.transfers.create_endpoint(name="slowdev", url=proxy.url)
        policy = c.policies.create(policy=policy_pb2.Policy(
            name="slow", source=policy_pb2.PolicySource(endpoint="slowdev", repository="dev/big"),
            target=common_pb2.Target(endpoint="qa", repository="qa/big"),
            rule='tag endswith "stable"', enabled=True,
        ))
        sign_in(page, env)
        page.goto(env.base + f"/policies/{policy.id}")
        expect(page.get_by_text("No run yet.")).to_be_visible()
        page.get_by_role("button", name="Apply now").click()
        run = page.locator("tr.run", has_text="3.0-stable")
        expect(run.locator("progress")).to_be_visible(timeout=30_000)
        expect(run.locator(".state")).to_have_text(re.compile("PENDING|RUNNING"))
        expect(run.locator(".progress")).to_contain_text("blobs")
        reloads: list[str] = []
        page.on("framenavigated", lambda frame: reloads.append(frame.url))
        expect(run.locator(".state")).to_have_text("SUCCEEDED", timeout=60_000)
        expect(run.locator("progress")).to_have_count(0)
        assert reloads == []
        assert proxy.requests("GET", rf"/blobs/{re.escape(big_blob.digest)}$")


def test_edit_a_registry_keeps_the_stored_password(page: Page, env: Env) -> None:
    opts = RegistryOptions(tls=True, htpasswd_users={QA_USER: QA_PASSWORD})
    with start_registry(opts, env.tmp / "editme") as upstream:
        connected = assert_edit_keeps_password(page, env, upstream)
    assert connected.has_secret and connected.username == QA_USER


def assert_edit_keeps_password(
    page: Page, env: Env, upstream: RegistryProcess
) -> transfer_pb2.Endpoint:
    """Edit a registry's CA in the form; the stored password still signs in afterwards."""
    with env.client() as c:
        # No CA yet: TLS cannot be verified until the edit adds it.
        c.transfers.create_endpoint(name="editme", url=upstream.url, username=QA_USER,
                                    secret=QA_PASSWORD)
    sign_in(page, env)
    page.goto(env.base + "/registries")
    page.get_by_role("link", name="editme").click()
    page.get_by_label("Repository to check").fill("team/app")
    page.get_by_role("button", name="Connect").click()
    expect(page.locator("#connect-result li.step.failed")).to_contain_text("TLS verified")
    page.get_by_role("link", name="Edit").click()
    expect(page.get_by_label("Password or access token")).to_have_value("")
    expect(page.get_by_label("Password or access token")).to_have_attribute(
        "placeholder", "stored: leave empty to keep it")
    page.get_by_text("Show advanced settings").click()
    page.get_by_label("CA certificate (PEM)").fill(upstream.ca_pem)
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("heading", name="Registry editme")).to_be_visible()
    page.get_by_label("Repository to check").fill("team/app")
    page.get_by_role("button", name="Connect").click()
    # The stored password still signs in: authenticated, and push allowed.
    expect(page.locator("#connect-result li.step.ok")).to_have_count(5)
    with env.client() as c:
        e = c.transfers.get_endpoint("editme")
        assert e.has_secret and e.username == QA_USER and e.ca_pem.strip()
    assert QA_PASSWORD not in page.content()
    return e


def test_a_refused_save_with_a_new_registry_registers_it_once(page: Page, env: Env) -> None:
    password = "another-" + "c41e8f9b07d2a356"
    opts = RegistryOptions(htpasswd_users={QA_USER: password})
    with start_registry(opts, env.tmp / "another") as another:
        open_form(page, env)
        page.locator("#registry").select_option("__new__")
        page.get_by_label("Name of the new registry").fill("another")
        page.locator("#new_url").fill(another.url)
        page.locator("#new_username").fill(QA_USER)
        page.locator("#new_secret").fill(password)
        page.get_by_label("Remote repository").fill("team/copy")
        page.locator("#rule").fill("tag ==")
        page.get_by_label("Mirror name").fill("to-another")
        with page.expect_response(
            lambda r: r.url == env.base + "/mirrors" and r.request.method == "POST"
        ) as refused:
            page.get_by_role("button", name="Save", exact=True).click()
        expect(page.get_by_role("alert").first).to_contain_text("rule")
        # The refused form comes back with what was typed, except the password.
        assert refused.value.status == 400
        assert password not in refused.value.text()
        expect(page.locator("#new_secret")).to_have_value("")
        expect(page.locator("#new_username")).to_have_value(QA_USER)
        assert password not in page.content()
        # Fix the rule and save again: the registry made by the first Save is reused, with
        # the password that Save stored (the empty field keeps it).
        page.locator("#rule").fill('tag == "1.0"')
        expect(page.locator("#rule-check")).to_contain_text("The rule is valid")
        page.get_by_role("button", name="Save", exact=True).click()
        expect(page.get_by_role("heading", name="Mirror to-another")).to_be_visible()
        with env.client() as c:
            stored = c.transfers.get_endpoint("another")
            assert stored.url == another.url
            assert stored.has_secret and stored.username == QA_USER
            policy = next(p for p in c.policies.iter() if p.name == "to-another")
            assert policy.target.endpoint == "another"


def test_webhook_secret_is_write_only_and_the_page_shows_where_to_send_events(
    page: Page, env: Env
) -> None:
    import urllib.error
    import urllib.request

    secret = "hook-" + "5a0c19e7d2b84f36"
    with start_registry(RegistryOptions(), env.tmp / "hooked") as hooked:
        sign_in(page, env)
        page.goto(env.base + "/registries/new")
        page.get_by_label("Name", exact=True).fill("hooked")
        page.get_by_label("Registry URL").fill(hooked.url)
        page.get_by_text("Show advanced settings").click()
        page.get_by_label("Webhook secret").fill(secret)
        page.get_by_role("button", name="Add registry").click()
        expect(page.get_by_role("heading", name="Registry hooked")).to_be_visible()
        expect(page.locator(".facts")).to_contain_text("Webhook secret")
        expect(page.locator("#events-url")).to_have_text(env.base + "/events/hooked")
        assert secret not in page.content()
        page.get_by_role("link", name="Edit").click()
        expect(page.get_by_label("Webhook secret")).to_have_value("")
        assert secret not in page.content()
        with env.client() as c:
            assert c.transfers.get_endpoint("hooked").has_webhook_secret

        # The URL shown takes this registry's notifications with its secret, and only so.
        def deliver(token: str) -> int:
            req = urllib.request.Request(
                env.base + "/events/hooked", data=b'{"events": []}', method="POST",
                headers={"Authorization": f"Bearer {token}",
                         "Content-Type": "application/vnd.docker.distribution.events.v1+json"},
            )
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:
                    return int(resp.status)
            except urllib.error.HTTPError as err:
                return err.code

        assert deliver(secret) == 200
        assert deliver("not-the-secret-0000") == 401


def test_edit_a_policy_and_a_stale_edit_is_refused(page: Page, env: Env) -> None:
    with env.client() as c:
        created = c.policies.create(policy=_policy("to-edit"))
    sign_in(page, env)
    page.goto(env.base + f"/policies/{created.id}")
    page.get_by_role("link", name="Edit").click()
    expect(page.locator("#rule")).to_have_value('tag endswith "stable"')
    expect(page.locator("#rule-check")).to_contain_text("The rule is valid")
    page.locator("#rule").fill('tag endswith "stable" and')
    expect(page.locator("#rule-check li.rule-error")).to_have_count(1)
    page.locator("#rule").fill('tag endswith "-rc"')
    page.get_by_label("Use a tag template").check()
    page.get_by_label("Tag template", exact=True).fill("%Y-%n")
    expect(page.locator("#tag-preview-value")).to_contain_text("-1.4-stable")
    page.get_by_label("When the remote tag already holds another image").select_option("never")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("heading", name="Mirror to-edit")).to_be_visible()
    expect(page.locator(".facts")).to_contain_text('tag endswith "-rc"')
    with env.client() as c:
        edited = c.policies.get(created.id)
    assert (edited.rule, edited.tag_template) == ('tag endswith "-rc"', "%Y-%n")
    assert edited.overwrite == 2 and edited.etag != created.etag
    assert (edited.source.endpoint, edited.target.repository) == ("dev", "qa/actions")

    # Someone else changes it while this form is open: the form's save is refused.
    page.get_by_role("link", name="Edit").click()
    with env.client() as c:
        c.policies.update(created.id, description="changed elsewhere", etag=edited.etag)
    page.get_by_label("Description").fill("mine")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("alert").first).to_be_visible()
    with env.client() as c:
        assert c.policies.get(created.id).description == "changed elsewhere"


def test_delete_a_registry_after_confirming_and_not_while_a_mirror_uses_it(
    page: Page, env: Env
) -> None:
    with start_registry(RegistryOptions(), env.tmp / "doomed") as doomed, env.client() as c:
        from mirror.v1 import common_pb2, policy_pb2

        c.transfers.create_endpoint(name="doomed", url=doomed.url)
        user = c.policies.create(policy=policy_pb2.Policy(
            name="uses-doomed",
            source=policy_pb2.PolicySource(endpoint="doomed", repository="team/a"),
            target=common_pb2.Target(endpoint="doomed", repository="team/b"),
            rule="true", enabled=True,
        ))
        sign_in(page, env)
        page.goto(env.base + "/registries/doomed")
        page.get_by_role("link", name="Delete").click()
        expect(page.get_by_role("heading", name="Delete registry doomed?")).to_be_visible()
        expect(page.get_by_role("link", name="uses-doomed")).to_be_visible()
        page.get_by_role("button", name="Delete").click()
        expect(page.get_by_role("alert")).to_be_visible()
        assert c.transfers.get_endpoint("doomed").name == "doomed"
        c.policies.delete(user.id)
        page.goto(env.base + "/registries/doomed/delete")
        page.get_by_role("button", name="Delete").click()
        expect(page).to_have_url(re.compile(r"/registries$"))
        assert "doomed" not in [e.name for e in c.transfers.iter_endpoints()]


# Notes the moment each Connect step first shows a result (the stream replaces its <li>).
RECORD_STEPS = """() => {
  window.__steps = {};
  const box = document.getElementById("connect-result");
  new MutationObserver(() => {
    box.querySelectorAll("li.step").forEach((li) => {
      if (!li.classList.contains("pending") && !(li.id in window.__steps)) {
        window.__steps[li.id] = performance.now();
      }
    });
  }).observe(box, {subtree: true, childList: true, attributes: true});
}"""


def _steps_arrive_one_by_one(page: Page) -> None:
    page.evaluate(RECORD_STEPS)
    page.get_by_role("button", name="Connect").click()
    result = page.locator("#connect-result")
    # Reachable is shown while the later (delayed) steps are still being checked.
    expect(result.locator("#step-reachable.ok")).to_be_visible()
    expect(result.locator("#step-push")).to_have_class(re.compile(r"\bpending\b"))
    expect(result.locator("li.step.pending")).to_have_count(0, timeout=30_000)
    # Plain HTTP: TLS is skipped, every other step passes.
    expect(result.locator("li.step.ok")).to_have_count(4)
    expect(result.locator("#step-tls")).to_have_class(re.compile(r"\bskipped\b"))
    expect(page.locator("#connect-summary")).to_have_text("Connected: every check passed.")
    seen = page.evaluate("() => window.__steps")
    assert set(seen) == {f"step-{k}" for k in ("reachable", "tls", "authenticated", "pull",
                                                "push")}, seen
    # The proxy holds each request under /v2/team/ back 2 s: pull and push come seconds later.
    assert seen["step-reachable"] < seen["step-pull"] - 1500 < seen["step-push"] - 1500, seen


def test_connect_shows_each_step_as_it_completes(page: Page, env: Env) -> None:
    with FaultProxy(env.dev.url) as proxy, env.client() as c:
        proxy.delay(r"^/v2/team/", seconds=2)
        c.transfers.create_endpoint(name="slowcheck", url=proxy.url)
        sign_in(page, env)
        page.goto(env.base + "/registries/slowcheck")
        page.get_by_label("Repository to check").fill("team/app")
        _steps_arrive_one_by_one(page)
        # New mirror's Connect streams the same way (push permission on the remote).
        page.goto(env.base + "/mirrors/new?endpoint=dev&repository=dev/website")
        page.locator("#registry").select_option("slowcheck")
        page.get_by_label("Remote repository").fill("team/app")
        _steps_arrive_one_by_one(page)
        # A check runs once: its stream asked again only says it is over.
        resp = page.request.get(env.base + "/connect/unknown-check-id")
        assert resp.status == 200 and "event: close" in resp.text()
        assert len(proxy.requests("GET", r"^/v2/$")) >= 2


def test_a_registry_lists_the_repositories_its_mirrors_and_runs_name(
    page: Page, env: Env, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from mirror.v1 import common_pb2, policy_pb2

    with env.client() as c:
        policy = c.policies.create(policy=policy_pb2.Policy(
            name="globbed", source=policy_pb2.PolicySource(endpoint="dev", repository="globs/**"),
            target=common_pb2.Target(endpoint="qa", repository="mirror/{path}"),
            rule='tag endswith "stable"', enabled=True,
        ))
        push(ImageBuilder(tmp_path_factory.mktemp("glob")).image("1.0-stable"), env.dev,
             "globs/app")
        sign_in(page, env)
        page.goto(env.base + f"/policies/{policy.id}")
        expect(page.locator("tr.run .state").first).to_have_text("SUCCEEDED", timeout=60_000)
    page.goto(env.base + "/registries/qa")
    # Neither the glob nor the template: the repositories the run read and wrote.
    mirrored = page.locator("#mirrored")
    expect(mirrored.get_by_role("link", name="mirror/app")).to_be_visible()
    expect(page.get_by_role("link", name="mirror/{path}")).to_have_count(0)
    # The catalog lists it too, marked as mirrored.
    expect(page.locator("#catalog li", has_text="mirror/app")).to_contain_text("mirrored")
    page.goto(env.base + "/registries/dev")
    page.locator("#mirrored").get_by_role("link", name="globs/app").click()
    expect(page.locator("tr[data-policy=globbed]")).to_contain_text("mirror/{path} on qa")


def test_runs_filter_by_state_and_page_back(
    page: Page, env: Env, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from mirror.v1 import common_pb2, policy_pb2

    images = ImageBuilder(tmp_path_factory.mktemp("paged"))
    with env.client() as c:
        policy = c.policies.create(policy=policy_pb2.Policy(
            name="paged", source=policy_pb2.PolicySource(endpoint="dev", repository="dev/paged"),
            target=common_pb2.Target(endpoint="qa", repository="qa/paged"),
            rule='tag endswith "stable"', enabled=True,
        ))
        for tag in ("1-stable", "2-dev", "3-stable"):
            push(images.image(tag, layers=[1000 + len(tag)]), env.dev, "dev/paged")
        wait_for("three finished runs", lambda: [
            r for r in c.gateway.iter_runs(policy_id=policy.id)
            if r.state in (r.STATE_SUCCEEDED, r.STATE_NOT_MATCHED)
        ][2:])
    with standalone_console(env, "--runs-per-page", "2") as base:
        sign_in(page, env, base=base)
        page.goto(base + f"/policies/{policy.id}")
        expect(page.locator("tr.run")).to_have_count(2)
        page.get_by_role("link", name="Older runs").click()
        expect(page.locator("tr.run")).to_have_count(1)
        expect(page.get_by_role("link", name="Older runs")).to_have_count(0)
        page.get_by_role("link", name="Newest runs").click()
        expect(page.locator("tr.run")).to_have_count(2)
        page.get_by_label("Show").select_option("not_matched")
        page.get_by_role("button", name="Show").click()
        expect(page.locator("tr.run")).to_have_count(1)
        expect(page.locator("tr.run")).to_contain_text("2-dev")
        expect(page.locator("tr.run .state")).to_have_text("NOT_MATCHED")


def test_a_form_without_a_source_registry_is_refused_not_a_server_error(
    page: Page, env: Env
) -> None:
    open_form(page, env)
    csrf = page.locator("#new-mirror input[name=_csrf]").get_attribute("value") or ""
    resp = page.request.post(env.base + "/mirrors", multipart={
        "_csrf": csrf, "direction": "pull", "registry": "", "remote_repository": "x/y",
        "endpoint": "dev", "repository": "dev/website", "rule": "true", "name": "no-source",
    })
    assert resp.status == 400
    assert "choose the remote registry" in resp.text()


def test_pull_mirror_on_a_schedule_with_advanced_settings(page: Page, env: Env) -> None:
    open_form(page, env)
    page.locator("#repository").fill("dev/pulled")
    page.get_by_label("Pull from remote registry").check()
    page.locator("#registry").select_option("qa")
    page.get_by_label("Remote repository").fill("qa/website")
    page.get_by_label("Poll the source on a schedule").check()
    page.get_by_label("Poll every").fill("30m")
    page.get_by_text("Show advanced mirror settings").click()
    page.get_by_label("Only these platforms").fill("linux/amd64")
    page.get_by_label("Mirror only the newest tags").fill("3")
    page.get_by_label("signatures").check()
    page.get_by_label("Mirror name").fill("pull-scheduled")
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.get_by_role("heading", name="Mirror pull-scheduled")).to_be_visible()
    facts = page.locator(".facts")
    expect(facts).to_contain_text("polls every 30m")
    expect(facts).to_contain_text("linux/amd64")
    expect(facts).to_contain_text("3 tags")
    with env.client() as c:
        p = next(p for p in c.policies.iter() if p.name == "pull-scheduled")
    assert p.trigger.schedule.interval.seconds == 1800
    assert list(p.platforms) == ["linux/amd64"] and p.keep_newest == 3
    assert list(p.copy_referrers) == ["signatures"]
    assert (p.source.endpoint, p.target.repository) == ("qa", "dev/pulled")
    page.goto(env.base + "/repositories/dev/dev/pulled")
    expect(page.locator("tr[data-policy=pull-scheduled]")).to_contain_text("polls every 30m")
