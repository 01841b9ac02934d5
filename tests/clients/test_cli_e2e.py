"""mirrorctl run as a user would: subprocess, real mirror-stack, real registries, skopeo."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from registry_testkit.images import ImageBuilder, digest_of, push
from registry_testkit.registry import RegistryProcess
from tests.clients.livestack import (
    ADMIN_TOKEN,
    READ_TOKEN,
    WEBHOOK_SECRET,
    LiveStack,
    notification,
    running,
    start_stack,
    wait_for,
)

pytestmark = pytest.mark.registry

QA_USER = "alice"
QA_SECRET = "alice-secret-1"  # HTPASSWD_USERS of the tls_registry fixture


@pytest.fixture
def live(tmp_path: Path, registry_factory) -> Iterator[tuple[LiveStack, RegistryProcess,
                                                            RegistryProcess]]:
    proc = start_stack(tmp_path)
    dev = registry_factory(notifications=[notification(proc)])
    qa = registry_factory(tls=True, htpasswd_users={QA_USER: QA_SECRET})
    for ls in running(proc):
        yield ls, dev, qa


def _add_endpoints(ls: LiveStack, dev: RegistryProcess, qa: RegistryProcess, tmp: Path) -> None:
    r = ls.ctl("endpoint", "add", "dev", "--url", dev.url)
    assert r.code == 0, r.stderr
    ca = tmp / "qa-ca.pem"
    ca.write_text(qa.ca_pem)
    r = ls.ctl("endpoint", "add", "qa", "--url", qa.url, "--username", QA_USER,
               "--secret-stdin", "--ca-file", str(ca), stdin=QA_SECRET + "\n")
    assert r.code == 0, r.stderr
    assert "endpoint qa added" in r.stdout


def test_cli_mirrors_a_pushed_image(live, tmp_path: Path, images: ImageBuilder) -> None:
    ls, dev, qa = live
    _add_endpoints(ls, dev, qa, tmp_path)

    shown = ls.ctl("endpoint", "show", "qa", "-o", "json")
    assert shown.code == 0, shown.stderr
    doc = shown.json()
    assert doc["has_secret"] is True and "secret" not in doc

    check = ls.ctl("endpoint", "test", "qa", "--repository", "team/website", "--push")
    assert check.code == 0, check.stdout + check.stderr
    assert "authenticated" in check.stdout

    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(yaml.safe_dump({
        "name": "promote-stable",
        "source": {"endpoint": "dev", "repository": "team/website"},
        "rule": 'tag endswith "stable"',
        "target": {"endpoint": "qa", "repository": "team/website"},
    }))
    created = ls.ctl("policy", "create", "-f", str(policy_file))
    assert created.code == 0, created.stderr
    listed = ls.ctl("policy", "list", "-o", "json").json()
    assert [(p["name"], p["enabled"]) for p in listed] == [("promote-stable", True)]

    image = images.image("1.0-stable", layers=[200_000, 50_000])
    push(image, dev, "team/website")

    def finished_run() -> dict | None:
        runs = ls.ctl("runs", "list", "-o", "json").json()
        done = [r for r in runs if r.get("transfer_id")]
        return done[0] if done else None

    run = wait_for("a run with a transfer", finished_run)
    watched = ls.ctl("transfer", "watch", run["transfer_id"])
    assert watched.code == 0, watched.stdout + watched.stderr
    last_line = watched.stdout.strip().splitlines()[-1]
    assert " done " in last_line and image.digest in last_line

    table = ls.ctl("runs", "list")
    assert table.code == 0 and "promote-stable" in table.stdout
    runs = wait_for("the run to succeed", lambda: [
        r for r in ls.ctl("runs", "list", "-o", "json").json() if r["state"] == "succeeded"
    ])
    assert runs[0]["policy_name"] == "promote-stable"
    assert runs[0]["source"]["reference"] == "1.0-stable"
    assert digest_of(qa, "team/website", "1.0-stable", user=QA_USER) == image.digest

    explained = ls.ctl("policy", "explain", "promote-stable", "--image",
                       "dev/team/website:1.0-stable")
    assert explained.code == 0, explained.stderr
    assert "MATCHES" in explained.stdout and 'tag endswith "stable"' in explained.stdout
    # A rule on vulnerabilities needs the scanner's facts: explain scans the image first.
    scanned = ls.ctl("policy", "explain", "critical_vulns == 0 and tag == \"1.0\"", "--image",
                     "dev/team/website:1.0-stable", "-o", "json")
    assert scanned.code == 1, scanned.stderr  # tag differs: no match, exit 1
    doc = scanned.json()
    assert doc["facts"]["digest"] == image.digest
    clauses = {c["clause"]: c for c in doc["result"]["explanation"]["clauses"]}
    assert clauses["critical_vulns == 0"]["value"] == "0"
    assert clauses["critical_vulns == 0"].get("result", False) is True
    report = ls.ctl("scan", "show", image.digest, "-o", "json")
    assert report.code == 0 and report.json()["digest"] == image.digest

    shown = ls.ctl("transfer", "show", run["transfer_id"], "-o", "yaml")
    assert yaml.safe_load(shown.stdout)["digest"] == image.digest

    _assert_no_secret_leaked(ls)


def test_apply_dry_run_changes_nothing(live, tmp_path: Path) -> None:
    ls, dev, qa = live
    _add_endpoints(ls, dev, qa, tmp_path)
    r = ls.ctl("policy", "create", "--name", "keep", "--source", "dev/team/app",
               "--rule", 'tag == "1.0"', "--target", "qa/team/app")
    assert r.code == 0, r.stderr
    before = ls.ctl("export", "-o", "json").json()

    (tmp_path / "qa-password").write_text(QA_SECRET + "\n")
    desired = {
        "endpoints": [
            {"name": "dev", "url": dev.url},
            {"name": "qa", "url": qa.url, "username": QA_USER, "maxConcurrency": 3,
             "secretFrom": {"file": "qa-password"}},
        ],
        "policies": [
            {"name": "keep", "source": {"endpoint": "dev", "repository": "team/app"},
             "rule": 'tag == "1.0"', "target": {"endpoint": "qa", "repository": "team/app"}},
            {"name": "new-one", "source": {"endpoint": "dev", "repository": "team/api"},
             "rule": 'tag matches "^v"', "target": {"endpoint": "qa", "repository": "team/api"},
             "overwrite": "never"},
        ],
    }
    mirror_yaml = tmp_path / "mirror.yaml"
    mirror_yaml.write_text(yaml.safe_dump(desired))

    plan = ls.ctl("apply", "-f", str(mirror_yaml), "--dry-run")
    assert plan.code == 0, plan.stderr
    assert "1 to create, 1 to update, 0 to delete, 2 unchanged (dry run" in plan.stdout
    as_json = ls.ctl("apply", "-f", str(mirror_yaml), "--dry-run", "-o", "json").json()
    actions = {(c["kind"], c["name"]): (c["action"], c["fields"]) for c in as_json["changes"]}
    assert actions == {
        ("endpoint", "dev"): ("unchanged", []),
        ("endpoint", "qa"): ("update", ["max_concurrency"]),
        ("policy", "keep"): ("unchanged", []),
        ("policy", "new-one"): ("create", ["name", "overwrite", "rule", "source", "target"]),
    }
    assert ls.ctl("export", "-o", "json").json() == before

    # Applied for real, then a second apply is a no-op.
    assert ls.ctl("apply", "-f", str(mirror_yaml)).code == 0
    again = ls.ctl("apply", "-f", str(mirror_yaml), "--dry-run", "-o", "json").json()
    assert {c["action"] for c in again["changes"]} == {"unchanged"}
    # --prune deletes what the file lacks; dry run first shows it.
    mirror_yaml.write_text(yaml.safe_dump({**desired, "policies": desired["policies"][1:]}))
    pruned = ls.ctl("apply", "-f", str(mirror_yaml), "--dry-run", "--prune", "-o", "json").json()
    assert [(c["action"], c["name"]) for c in pruned["changes"] if c["action"] == "delete"] == [
        ("delete", "keep")
    ]
    exported = yaml.safe_load(ls.ctl("export").stdout)
    qa_doc = next(e for e in exported["endpoints"] if e["name"] == "qa")
    assert qa_doc["secretFrom"] == {"env": "MIRROR_SECRET_QA"}
    assert QA_SECRET not in json.dumps(exported)
    _assert_no_secret_leaked(ls)


def test_cli_errors_and_exit_codes(live, tmp_path: Path) -> None:
    ls, dev, qa = live
    _add_endpoints(ls, dev, qa, tmp_path)
    bad = ls.ctl("policy", "validate", 'tag endswith "x" and\n  critcal_vulns < 3')
    assert bad.code == 4
    lines = bad.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("rule:2:3:"))
    assert lines[at + 1] == "    critcal_vulns < 3"
    assert lines[at + 2] == "    ^" + "~" * (len("critcal_vulns") - 1)
    assert "critical_vulns" in bad.stdout  # the suggestion

    created = ls.ctl("policy", "create", "--name", "p", "--source", "dev/team/x",
                     "--rule", "tag ==", "--target", "qa/team/x")
    assert created.code == 4
    assert "rule:1:" in created.stderr

    missing = ls.ctl("policy", "show", "no-such-policy")
    assert missing.code == 3 and "policy list" in missing.stderr
    assert ls.ctl("endpoint", "show", "nope").code == 3
    assert ls.ctl("transfer", "start", "not a ref", "--to", "qa/x").code == 2
    assert ls.ctl("policy", "frobnicate").code == 2

    unauth = ls.ctl("endpoint", "list", token=None)
    assert unauth.code == 1 and "token" in unauth.stderr
    read_ok = ls.ctl("endpoint", "list", "-o", "json", token=READ_TOKEN)
    assert read_ok.code == 0 and {e["name"] for e in read_ok.json()} == {"dev", "qa"}
    denied = ls.ctl("endpoint", "rm", "dev", token=READ_TOKEN)
    assert denied.code == 1 and "admin token" in denied.stderr

    status = ls.ctl("status", "-o", "json", token=None)
    assert status.code == 0
    assert {s["status"] for s in status.json()["services"]} == {"serving"}
    _assert_no_secret_leaked(ls)


def _assert_no_secret_leaked(ls: LiveStack) -> None:
    """Neither the endpoint secret nor any token appears in the logs or the CLI's outputs."""
    texts = {"stack log": ls.log, **{f"output {i}": o for i, o in enumerate(ls.outputs)}}
    for name, text in texts.items():
        for secret in (QA_SECRET, ADMIN_TOKEN, READ_TOKEN, WEBHOOK_SECRET):
            assert secret not in text, f"{name} contains a secret"
