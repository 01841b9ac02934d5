"""mirrorctl with the trigger and copy settings of issues 12 and 13 against a live stack: the
YAML fields through `apply -f` and `export` (round trip unchanged, updates by field, bad values
refused before anything changes), the `policy create` flags, and `-o json` in the one spelling
(numbers as numbers, lowercase enum names, every field)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from registry_testkit.registry import RegistryProcess
from tests.clients.livestack import LiveStack, running, start_stack

pytestmark = pytest.mark.registry


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveStack]:
    yield from running(start_stack(tmp_path))


def _ok(ls: LiveStack, *args: str) -> str:
    r = ls.ctl(*args)
    assert r.code == 0, f"{args}: {r.code}\n{r.stdout}\n{r.stderr}"
    return r.stdout


def _file(path: Path, policies: list[dict[str, Any]]) -> str:
    path.write_text(yaml.safe_dump({"policies": policies}, sort_keys=False))
    return str(path)


def _policy(name: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "source": {"endpoint": "dev", "repository": f"up/{name}"},
            "rule": "true", "target": {"endpoint": "qa", "repository": f"mirror/{name}"},
            "enabled": False, **fields}


def _get(ls: LiveStack, name: str) -> dict[str, Any]:
    return ls.ctl("policy", "get", name, "-o", "json").json()  # type: ignore[no-any-return]


def test_apply_export_and_create_flags_for_the_settings(
    live: LiveStack, registry_factory: Callable[..., RegistryProcess], tmp_path: Path,
) -> None:
    ls = live
    dev, qa = registry_factory(), registry_factory()
    _ok(ls, "endpoint", "add", "dev", "--url", dev.url)
    _ok(ls, "endpoint", "add", "qa", "--url", qa.url)
    wanted = [
        _policy("pull", trigger={"schedule": {"interval": "30s", "jitter": "5s"}},
                platforms=["linux/amd64"], keepNewest=3, deletions="dry-run",
                copyReferrers=["signatures"], signatureWait="10m"),
        _policy("nightly", trigger={"schedule": {"cron": "0 3 * * *"}}, deletions="propagate",
                copyReferrers="all"),
        _policy("by-hand", trigger="manual", platforms=["linux/amd64", "linux/arm64/v8"]),
        _policy("pushed"),
    ]
    path = tmp_path / "mirror.yaml"
    _ok(ls, "apply", "-f", _file(path, wanted))

    pull = _get(ls, "pull")
    assert pull["trigger"] == {"push": None, "manual": None,
                               "schedule": {"interval": "30s", "cron": "", "jitter": "5s"}}
    assert (pull["platforms"], pull["keep_newest"], pull["deletions"], pull["copy_referrers"],
            pull["signature_wait"]) == (["linux/amd64"], 3, "dry_run", ["signatures"], "600s")
    nightly = _get(ls, "nightly")
    assert nightly["trigger"]["schedule"]["cron"] == "0 3 * * *"
    assert (nightly["deletions"], nightly["copy_referrers"]) == ("propagate", ["all"])
    assert _get(ls, "by-hand")["trigger"] == {"push": None, "schedule": None, "manual": {}}
    pushed = _get(ls, "pushed")
    # Unset settings print as what they mean: no trigger (push), deletions off, no wait.
    assert (pushed["trigger"], pushed["deletions"], pushed["keep_newest"],
            pushed["platforms"], pushed["signature_wait"]) == (None, "off", 0, [], None)

    shown = _ok(ls, "policy", "show", "pull")
    for text in ("every 30s, jitter 5s", "linux/amd64", "dry_run", "signatures", "10m"):
        assert text in shown
    assert "cron 0 3 * * *" in _ok(ls, "policy", "get", "nightly")
    wide = _ok(ls, "policy", "list", "-o", "wide")
    for text in ("TRIGGER", "every 30s, jitter 5s", "cron 0 3 * * *", "manual", "push"):
        assert text in wide

    # export writes them as the file spells them; applying the export changes nothing.
    exported = yaml.safe_load(_ok(ls, "export"))
    by_name = {p["name"]: p for p in exported["policies"]}
    assert by_name["pull"]["trigger"] == {"schedule": {"interval": "30s", "jitter": "5s"}}
    assert (by_name["pull"]["signatureWait"], by_name["pull"]["deletions"],
            by_name["pull"]["keepNewest"]) == ("10m", "dry_run", 3)
    assert by_name["by-hand"]["trigger"] == "manual"
    assert by_name["pushed"]["trigger"] == "push"
    export_path = tmp_path / "export.yaml"
    export_path.write_text(yaml.safe_dump(exported))
    plan = ls.ctl("apply", "-f", str(export_path), "--dry-run", "-o", "json").json()
    assert {c["action"] for c in plan["changes"]} == {"unchanged"}, plan
    assert plan["errors"] == []

    # An update names only the fields that differ, and a list can be emptied.
    wanted[0] = {**wanted[0], "trigger": "manual", "platforms": []}
    plan = ls.ctl("apply", "-f", _file(path, wanted), "--dry-run", "-o", "json").json()
    changed = [c for c in plan["changes"] if c["action"] == "update"]
    assert changed == [{"action": "update", "kind": "policy", "name": "pull",
                        "fields": ["trigger", "platforms"]}]
    _ok(ls, "apply", "-f", str(path))
    pull = _get(ls, "pull")
    assert (pull["trigger"]["manual"], pull["platforms"], pull["keep_newest"]) == ({}, [], 3)

    # Bad settings stop the whole apply, --dry-run too, and nothing changes.
    for bad, said in (
        ({"trigger": {"schedule": {"interval": "30s", "jitter": "1m"}}}, "jitter"),
        ({"trigger": {"schedule": {"cron": "every day"}}}, "cron"),
        ({"platforms": ["amd64"]}, "os/arch"),
    ):
        doc = [{**wanted[0], **bad}, _policy("another")]
        for extra in (("--dry-run",), ()):
            refused = ls.ctl("apply", "-f", _file(path, doc), *extra)
            assert refused.code == 4, (bad, refused.stdout, refused.stderr)
            assert said in refused.stderr and "nothing was changed" in refused.stderr
    for bad, said in (({"signatureWait": "soon"}, "signatureWait"),
                      ({"copyReferrers": ["sigs"]}, "unknown referrer kind 'sigs'"),
                      ({"deletions": "sometimes"}, "deletionmode"),
                      ({"trigger": "pull"}, "unknown trigger 'pull'"),
                      ({"trigger": {"schedule": {"interval": "30s", "cron": "* * * * *"}}},
                       "exactly one of interval")):
        refused = ls.ctl("apply", "-f", _file(path, [{**wanted[0], **bad}]))
        assert refused.code == 4 and said in refused.stderr, (bad, refused.stderr)
    assert "another" not in {p["name"] for p in ls.ctl("policy", "list", "-o", "json").json()}
    assert _get(ls, "pull")["trigger"]["manual"] == {}

    # policy create: the same settings as flags.
    made = ls.ctl("policy", "create", "--name", "flags", "--source", "dev/up/flags", "--rule",
                  "true", "--target", "qa/mirror/flags", "--cron", "*/5 * * * *", "--jitter",
                  "30s", "--platform", "linux/amd64", "--platform", "linux/arm64",
                  "--keep-newest", "2", "--deletions", "dry-run", "--copy-referrers",
                  "signatures,sboms", "--copy-referrers", "attestations", "--signature-wait",
                  "90s", "--disabled", "-o", "json")
    assert made.code == 0, made.stderr
    doc = made.json()
    assert doc["trigger"]["schedule"] == {"interval": None, "cron": "*/5 * * * *",
                                          "jitter": "30s"}
    assert (doc["platforms"], doc["keep_newest"], doc["deletions"], doc["copy_referrers"],
            doc["signature_wait"]) == (["linux/amd64", "linux/arm64"], 2, "dry_run",
                                       ["signatures", "sboms", "attestations"], "90s")
    spec = tmp_path / "p.yaml"
    spec.write_text(yaml.safe_dump(_policy("from-file", trigger={"schedule": {
        "interval": "1h"}})))
    made = ls.ctl("policy", "create", "-f", str(spec), "--jitter", "10m", "-o", "json")
    assert made.code == 0, made.stderr
    assert made.json()["trigger"]["schedule"] == {"interval": "3600s", "cron": "",
                                                  "jitter": "600s"}
    manual = _ok(ls, "policy", "create", "--name", "hand", "--source", "dev/up/hand", "--rule",
                 "true", "--target", "qa/mirror/hand", "--manual")
    assert "only 'mirrorctl policy apply hand' starts it" in manual
    polled = _ok(ls, "policy", "create", "--name", "polled", "--source", "dev/up/polled",
                 "--rule", "true", "--target", "qa/mirror/polled", "--schedule", "1h")
    assert "it polls dev/up/polled (every 1h)" in polled
    for args, code, said in (
        (("--schedule", "30s", "--manual"), 2, "not allowed with"),
        (("--jitter", "5s"), 2, "--jitter goes with --schedule or --cron"),
        (("--schedule", "soon"), 2, "--schedule"),
        (("--deletions", "sometimes"), 2, "--deletions"),
        (("--copy-referrers", "sigs"), 2, "unknown referrer kind 'sigs'"),
        (("--keep-newest", "-1"), 2, "must not be negative"),
        (("--schedule", "100ms"), 4, "at least 1s"),
    ):
        refused = ls.ctl("policy", "create", "--name", "bad", "--source", "dev/up/bad",
                         "--rule", "true", "--target", "qa/mirror/bad", *args)
        assert refused.code == code and said in refused.stderr, (args, refused.stderr)
    assert "bad" not in {p["name"] for p in ls.ctl("policy", "list", "-o", "json").json()}
