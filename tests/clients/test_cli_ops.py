"""mirrorctl for operators and CI against a live stack and real registries: notify,
reconcile, vulndb status, unplaced events in status, webhook secrets from stdin, -o json with
every field (a disabled policy round-trips through apply), -o wide, @sha256: references,
blocked runs, --version."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from registry_testkit.images import ImageBuilder, digest_of, list_tags, push
from registry_testkit.registry import RegistryProcess
from tests.clients.livestack import (
    ADMIN_TOKEN,
    MIRRORCTL,
    ROOT,
    WEBHOOK_SECRET,
    LiveStack,
    notification,
    running,
    start_stack,
    wait_for,
)

pytestmark = pytest.mark.registry

HOOK_TOKEN = "dev-hook-" + "c81f3a0d27e4"
QA_USER, QA_SECRET = "ci", "qa-secret-" + "3e7a91d0"


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveStack]:
    yield from running(start_stack(tmp_path))


def _ok(ls: LiveStack, *args: str, stdin: str | None = None) -> str:
    r = ls.ctl(*args, stdin=stdin)
    assert r.code == 0, f"{args}: {r.code}\n{r.stdout}\n{r.stderr}"
    return r.stdout


def _runs(ls: LiveStack, *args: str) -> list[dict]:
    return ls.ctl("runs", "list", *args, "-o", "json").json()


def test_version() -> None:
    from importlib import metadata

    res = subprocess.run([MIRRORCTL, "--version"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0
    assert res.stdout.strip() == f"mirrorctl {metadata.version('image-mirror')}"


def test_notify_reconcile_and_json_for_ci(
    live: LiveStack, registry_factory: Callable[..., RegistryProcess], images: ImageBuilder,
    tmp_path: Path,
) -> None:
    ls = live
    dev = registry_factory()  # sends no notifications: CI reports the pushes
    qa = registry_factory(htpasswd_users={QA_USER: QA_SECRET})
    image = images.image("1.0", layers=[30_000])
    push(image, dev, "team/app")
    _ok(ls, "endpoint", "add", "dev", "--url", dev.url)
    # Both secrets on stdin: the password first, then the notifications' token.
    added = _ok(ls, "endpoint", "add", "qa", "--url", qa.url, "--username", QA_USER,
                "--secret-stdin", "--webhook-secret-stdin", stdin=f"{QA_SECRET}\n{HOOK_TOKEN}\n")
    assert "endpoint qa added" in added
    qa_doc = ls.ctl("endpoint", "show", "qa", "-o", "json").json()
    assert (qa_doc["has_secret"], qa_doc["has_webhook_secret"]) == (True, True)
    assert ls.ctl("endpoint", "show", "dev", "-o", "json").json()["has_webhook_secret"] is False
    assert "WEBHOOK SECRET" in _ok(ls, "endpoint", "list")
    assert "ALIASES" in _ok(ls, "endpoint", "list", "-o", "wide")
    empty = ls.ctl("endpoint", "update", "dev", "--webhook-secret-stdin", stdin="")
    assert empty.code == 2 and "--webhook-secret-stdin: nothing was read" in empty.stderr

    _ok(ls, "policy", "create", "--name", "ci", "--source", "dev/team/app", "--rule", "true",
        "--target", "qa/team/app", "--disabled")
    # A disabled policy in JSON: every field there, false as false, enums as the flags spell
    # them; the same document applies back as "unchanged".
    doc = ls.ctl("policy", "show", "ci", "-o", "json").json()
    assert doc["enabled"] is False and doc["allow_incomplete_facts"] is False
    assert doc["description"] == "" and doc["disabled_reason"] == ""
    assert doc["overwrite"] == "always"  # what unspecified means, as the flag spells it
    mutable = ("name", "description", "source", "rule", "target", "tag_template", "time_zone",
               "enabled", "overwrite", "allow_incomplete_facts")
    policy_file = tmp_path / "ci.yaml"
    policy_file.write_text(yaml.safe_dump({"policies": [{k: doc[k] for k in mutable}]}))
    plan = ls.ctl("apply", "-f", str(policy_file), "--dry-run", "-o", "json")
    assert plan.code == 0, plan.stderr
    assert [c["action"] for c in plan.json()["changes"]] == ["unchanged"]
    _ok(ls, "policy", "enable", "ci")

    notified = ls.ctl("notify", "dev", "team/app:1.0", "--event-id", "ci-build-1")
    assert notified.code == 0, notified.stderr
    assert "push of team/app:1.0 on dev reported (event " in notified.stdout
    again = _ok(ls, "notify", "dev", "team/app:1.0", "--event-id", "ci-build-1")
    assert "was already reported" in again
    runs = wait_for("the notified push mirrored", lambda: [
        r for r in _runs(ls, "--policy", "ci") if r["state"] == "succeeded"])
    assert len(runs) == 1 and runs[0]["trigger"] == "notify"
    assert isinstance(runs[0]["hop"], int)
    assert digest_of(qa, "team/app", "1.0", user=QA_USER) == image.digest
    transfer = ls.ctl("transfer", "show", runs[0]["transfer_id"], "-o", "json").json()
    assert transfer["state"] == "done" and isinstance(transfer["bytes_total"], int)
    assert transfer["bytes_total"] > 0 and transfer["next_attempt_time"] is None
    assert "NEXT ATTEMPT" in _ok(ls, "transfer", "list", "-o", "wide")
    assert "PROVENANCE" in _ok(ls, "runs", "list", "-o", "wide")
    assert ls.ctl("notify", "dev", "team/app").code == 2  # a push names a tag

    # A pinned digest with its tag, then reconcile: nothing was lost, nothing to do.
    pinned = ls.ctl("notify", "dev", f"team/app:1.0@{image.digest}", "-o", "json")
    assert pinned.code == 0 and pinned.json()["duplicate"] is False
    reconciled = ls.ctl("reconcile", "-o", "json")
    assert reconciled.code == 0, reconciled.stderr
    assert reconciled.json()["errors"] == [] and isinstance(reconciled.json()["tags_checked"],
                                                            int)
    assert "reconcile: " in _ok(ls, "reconcile")
    for out in [*ls.outputs, ls.log]:
        assert HOOK_TOKEN not in out and QA_SECRET not in out


def test_transfer_by_digest(
    live: LiveStack, registry_factory: Callable[..., RegistryProcess], images: ImageBuilder,
) -> None:
    ls = live
    dev, qa = registry_factory(), registry_factory()
    image = images.image("1.4", layers=[25_000])
    push(image, dev, "team/app")
    _ok(ls, "endpoint", "add", "dev", "--url", dev.url)
    _ok(ls, "endpoint", "add", "qa", "--url", qa.url)
    by_digest = ls.ctl("transfer", "start", f"dev/team/app@{image.digest}", "--to",
                       "qa/team/app:pinned", "--watch")
    assert by_digest.code == 0, by_digest.stdout + by_digest.stderr
    assert digest_of(qa, "team/app", "pinned") == image.digest
    # tag@digest: that digest, named by its tag at the destination.
    named = ls.ctl("transfer", "start", f"dev/team/app:1.4@{image.digest}", "--to",
                   "qa/team/other", "--watch")
    assert named.code == 0, named.stdout + named.stderr
    assert list_tags(qa, "team/other") == ["1.4"]
    listed = _ok(ls, "transfer", "list")
    assert f"dev/team/app@{image.digest[:20]}" in listed.replace("\n", "")
    bad = ls.ctl("transfer", "start", "dev/team/app@sha256:abc", "--to", "qa/team/app")
    assert bad.code == 2 and "64 lowercase hex digits" in bad.stderr
    to_digest = ls.ctl("transfer", "start", "dev/team/app:1.4", "--to",
                       f"qa/team/app@{image.digest}")
    assert to_digest.code == 2 and "cannot be a destination" in to_digest.stderr


def test_vulndb_status_and_blocked_runs(
    live: LiveStack, registry_factory: Callable[..., RegistryProcess], images: ImageBuilder,
) -> None:
    ls = live
    dev, qa = registry_factory(), registry_factory()
    push(images.image("1.0-stable", layers=[15_000]), dev, "team/app")
    _ok(ls, "endpoint", "add", "dev", "--url", dev.url)
    _ok(ls, "endpoint", "add", "qa", "--url", qa.url)

    none = ls.ctl("vulndb", "status")
    assert none.code == 3 and "no vulnerability data loaded" in none.stdout
    assert ls.ctl("vulndb", "status", "-o", "json").json()["loaded"] is False

    # Without vulnerability data a rule that reads it blocks the run, saying why.
    _ok(ls, "policy", "create", "--name", "gate", "--source", "dev/team/app", "--rule",
        "critical_vulns == 0", "--target", "qa/team/app", "--apply")
    blocked = wait_for("the run to be blocked", lambda: _runs(ls, "--state", "blocked"))
    assert blocked[0]["policy_name"] == "gate" and blocked[0]["message"]
    assert list_tags(qa, "team/app") == []
    # explain says so too, and that a push to another registry would not trigger the policy.
    explained = ls.ctl("policy", "explain", "gate", "--image", "dev/team/app:1.0-stable")
    assert explained.code == 1, explained.stdout + explained.stderr
    assert "blocked: " in explained.stdout
    _ok(ls, "policy", "create", "--name", "stable", "--source", "dev/team/app", "--rule",
        'tag endswith "stable"', "--target", "qa/team/stable")
    matches = ls.ctl("policy", "explain", "stable", "--image", "dev/team/app:1.0-stable")
    assert matches.code == 0 and "would copy to qa/team/stable:1.0-stable" in matches.stdout
    elsewhere = ls.ctl("policy", "explain", "stable", "--image", "qa/team/app:1.0-stable")
    assert elsewhere.code == 1 and "MATCHES" in elsewhere.stdout  # the rule alone does
    assert ("policy stable reads dev/team/app: a push of qa/team/app:1.0-stable does not "
            "trigger it") in elsewhere.stdout

    osv = ROOT / "tests/scanner/osv/CVE-2024-0727.json"
    _ok(ls, "vulndb", "import", str(osv))
    table = _ok(ls, "vulndb", "status")
    row = next(line for line in table.splitlines() if "Alpine:v3.19" in line)
    cells = [c.strip() for c in row.split("│")]
    assert cells[1] == "1" and cells[3].endswith("seconds")  # records, age
    status = ls.ctl("vulndb", "status", "-o", "json").json()
    assert status["loaded"] is True and status["records"] == 1
    assert [(s["name"], s["records"]) for s in status["sources"]] == [("Alpine:v3.19", 1)]


def test_status_lists_unplaced_events_with_the_alias_that_places_them(
    tmp_path: Path, registry_factory: Callable[..., RegistryProcess], images: ImageBuilder,
) -> None:
    proc = start_stack(tmp_path)
    dev = registry_factory(notifications=[notification(proc)])
    for ls in running(proc):
        # Registered under another name than the one its events carry (127.0.0.1:PORT).
        _ok(ls, "endpoint", "add", "dev", "--url", f"http://localhost:{dev.port}")
        push(images.image("1.0", layers=[12_000]), dev, "team/app")

        def unplaced(ls: LiveStack = ls) -> list[dict]:
            return ls.ctl("status", "-o", "json").json()["unplaced_events"]

        (event,) = wait_for("the push to be listed as unplaced", unplaced)
        assert event["repository"] == "team/app" and event["tag"] == "1.0"
        assert event["hosts"] == [dev.host] and isinstance(event["count"], int)
        assert (event["suggested_endpoint"], event["suggested_alias"]) == ("dev", dev.host)
        fix = f"mirrorctl endpoint update dev --alias {dev.host}"
        assert event["fix"] == fix
        table = _ok(ls, "status")
        assert "push events no endpoint places" in table and fix in table.replace("\n", "")
        assert table.count("serving") == 4
        # The printed command places them: run as printed.
        _ok(ls, *fix.split()[1:])
        assert ls.ctl("endpoint", "show", "dev", "-o", "json").json()["aliases"] == [dev.host]
        wait_for("no unplaced events left", lambda: unplaced() == [])
        without_token = ls.ctl("status", token=None)
        assert without_token.code == 0 and "need a token" in without_token.stderr
        assert WEBHOOK_SECRET not in json.dumps(ls.outputs)


# Every Policy field -o json prints: the settable ones and the output-only ones.
POLICY_KEYS = {
    "id", "name", "description", "rule", "target", "tag_template", "time_zone", "enabled",
    "create_time", "update_time", "etag", "required_facts", "source", "overwrite",
    "allow_incomplete_facts", "active_since", "disabled_reason", "trigger", "platforms",
    "keep_newest", "deletions", "copy_referrers", "signature_wait",
}
# Read by a CI script from `policy get -o json`, one field a line (repr: types show).
READ_FIELDS = (
    "import json, sys\n"
    "p = json.load(sys.stdin)\n"
    "for key in sorted(p):\n"
    "    print(key, repr(p[key]))\n"
)
# The whole printed document as an apply file, every key kept (output-only ones too).
AS_APPLY_FILE = (
    "import json, sys\n"
    "p = json.load(sys.stdin)\n"
    "p.update(json.loads(sys.argv[1]))\n"
    "print(json.dumps({'policies': [p]}))\n"
)


def _sh(ls: LiveStack, script: str) -> str:
    """A shell pipeline as a CI job writes it: mirrorctl and python on PATH, the stack's
    address and token in the environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIRROR_")}
    env.update(MIRROR_ADDRESS=ls.address, MIRROR_TOKEN=ADMIN_TOKEN,
               PATH=f"{ROOT / '.venv/bin'}:{env.get('PATH', '/usr/bin:/bin')}")
    res = subprocess.run(["bash", "-o", "pipefail", "-c", script], capture_output=True,
                         text=True, env=env, timeout=120, cwd=str(ROOT))
    ls.outputs += [res.stdout, res.stderr]
    assert res.returncode == 0, f"{script}: {res.returncode}\n{res.stdout}\n{res.stderr}"
    return res.stdout


def _apply_printed(ls: LiveStack, name: str, changes: dict[str, Any] | None = None) -> dict:
    """`policy get NAME -o json | python -c ... | mirrorctl apply -f -`: the plan applied."""
    script = (f"mirrorctl policy get {shlex.quote(name)} -o json | python -c "
              f"{shlex.quote(AS_APPLY_FILE)} {shlex.quote(json.dumps(changes or {}))} | "
              "mirrorctl apply -f - -o json")
    return json.loads(_sh(ls, script))  # type: ignore[no-any-return]


def test_json_of_disabled_policies_round_trips_every_field(
    live: LiveStack, registry_factory: Callable[..., RegistryProcess],
) -> None:
    ls = live
    dev, qa = registry_factory(), registry_factory()
    _ok(ls, "endpoint", "add", "dev", "--url", dev.url)
    _ok(ls, "endpoint", "add", "qa", "--url", qa.url)
    # Every settable field away from its default, and disabled.
    _ok(ls, "policy", "create", "--name", "pull-app", "--description", "nightly pull",
        "--source", "dev/team/**", "--rule", 'tag endswith "stable"',
        "--target", "qa/mirror/{path}", "--tag-template", "%n-mirror",
        "--time-zone", "Europe/Berlin", "--overwrite", "never", "--allow-incomplete-facts",
        "--disabled", "--schedule", "30m", "--jitter", "1m", "--platform", "linux/amd64",
        "--platform", "linux/arm64/v8", "--keep-newest", "3", "--deletions", "propagate",
        "--copy-referrers", "signatures,sboms", "--signature-wait", "10m")
    _ok(ls, "policy", "create", "--name", "by-hand", "--source", "dev/team/app", "--rule",
        "true", "--target", "qa/team/app", "--manual", "--disabled")

    read = _sh(ls, f"mirrorctl policy get pull-app -o json | python -c {shlex.quote(READ_FIELDS)}")
    fields = dict(line.split(" ", 1) for line in read.splitlines())
    assert set(fields) == POLICY_KEYS
    assert {k: fields[k] for k in (
        "name", "description", "enabled", "overwrite", "allow_incomplete_facts", "tag_template",
        "time_zone", "keep_newest", "platforms", "deletions", "copy_referrers",
        "signature_wait", "disabled_reason", "source", "target", "trigger",
    )} == {
        "name": "'pull-app'", "description": "'nightly pull'", "enabled": "False",
        "overwrite": "'never'", "allow_incomplete_facts": "True",
        "tag_template": "'%n-mirror'", "time_zone": "'Europe/Berlin'", "keep_newest": "3",
        "platforms": "['linux/amd64', 'linux/arm64/v8']", "deletions": "'propagate'",
        "copy_referrers": "['signatures', 'sboms']", "signature_wait": "'600s'",
        "disabled_reason": "''",
        "source": "{'endpoint': 'dev', 'repository': 'team/**'}",
        "target": "{'endpoint': 'qa', 'repository': 'mirror/{path}'}",
        "trigger": "{'push': None, 'schedule': {'interval': '1800s', 'cron': '', "
                   "'jitter': '60s'}, 'manual': None}",
    }

    manual = ls.ctl("policy", "get", "by-hand", "-o", "json").json()
    assert set(manual) == POLICY_KEYS
    assert manual["trigger"] == {"push": None, "schedule": None, "manual": {}}
    # Zero, false and empty fields are there, as what they mean; numbers are numbers.
    assert (manual["enabled"], manual["allow_incomplete_facts"], manual["keep_newest"],
            manual["platforms"], manual["copy_referrers"], manual["deletions"],
            manual["overwrite"], manual["description"], manual["signature_wait"]) == (
        False, False, 0, [], [], "off", "always", "", None)

    for name in ("pull-app", "by-hand"):
        before = ls.ctl("policy", "get", name, "-o", "json").json()
        # The whole document, output-only keys and nulls too, applies back as itself.
        plan = _apply_printed(ls, name)
        assert plan["errors"] == [] and [(c["action"], c["name"]) for c in plan["changes"]] == [
            ("unchanged", name)], plan
        assert ls.ctl("policy", "get", name, "-o", "json").json() == before
        # ... and a field changed in it is what changes.
        plan = _apply_printed(ls, name, {"keep_newest": 5, "description": "edited"})
        assert [(c["action"], c["fields"]) for c in plan["changes"]] == [
            ("update", ["description", "keep_newest"])], plan
        after = ls.ctl("policy", "get", name, "-o", "json").json()
        assert isinstance(after["keep_newest"], int)
        moved = {"etag", "update_time", "keep_newest", "description"}
        assert {k: v for k, v in after.items() if k not in moved} == {
            k: v for k, v in before.items() if k not in moved}
        assert (after["keep_newest"], after["description"]) == (5, "edited")
        assert after["etag"] != before["etag"]

        # `policy create -f -` takes the printed document too (its id, etag... ignored).
        copy = f"{name}-copy"
        script = (f"mirrorctl policy get {name} -o json | python -c "
                  "'import json, sys; p = json.load(sys.stdin); "
                  f"p[\"name\"] = \"{copy}\"; "
                  "p[\"target\"][\"repository\"] = \"copy/\" + p[\"target\"][\"repository\"]; "
                  "print(json.dumps(p))' | "
                  "mirrorctl policy create -f - -o json")
        created = json.loads(_sh(ls, script))
        assert created["id"] != after["id"] and created["name"] == copy
        same = POLICY_KEYS - {"id", "name", "target", "etag", "create_time", "update_time",
                              "active_since"}
        assert {k: created[k] for k in same} == {k: after[k] for k in same}
        assert created["enabled"] is False
