"""mirrorctl for pull mirroring (issue 12) against a live stack and real registries: a scheduled
policy created with flags polls a source that sends no events, `policy polls` and
`show`/`list -o wide` say what the polls saw, a tag moved upstream is copied again with the
digest it replaced in `runs list`, deletions propagate only when asked, and `policy prune`
lists (dry run) then deletes the tags a policy wrote that no longer match."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from registry_testkit.images import ImageBuilder, digest_of, list_tags, push
from registry_testkit.registry import RegistryProcess
from tests.clients.livestack import LiveStack, running, start_stack, wait_for

pytestmark = pytest.mark.registry


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    yield from running(start_stack(tmp_path_factory.mktemp("pull")))


def _ok(ls: LiveStack, *args: str, stdin: str | None = None) -> str:
    r = ls.ctl(*args, stdin=stdin)
    assert r.code == 0, f"{args}: {r.code}\n{r.stdout}\n{r.stderr}"
    return r.stdout


def _runs(ls: LiveStack, policy: str) -> list[dict]:  # type: ignore[type-arg]
    return ls.ctl("runs", "list", "--policy", policy, "-o", "json").json()  # type: ignore[no-any-return]


def _delete_tag(reg: RegistryProcess, repo: str, tag: str) -> None:
    """Delete the manifest a tag names (docker-registry 2.8.2 deletes by digest)."""
    digest = digest_of(reg, repo, tag)
    req = urllib.request.Request(f"{reg.url}/v2/{repo}/manifests/{digest}", method="DELETE")
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 202


def test_scheduled_policy_polls_copies_new_and_moved_tags(
    live: LiveStack, registry_factory: Callable[..., RegistryProcess], images: ImageBuilder,
) -> None:
    ls = live
    up, qa = registry_factory(), registry_factory()  # no notifications: only polls see it
    one = images.image("1.0", layers=[10_000])
    two = images.image("1.1", layers=[11_000])
    push(one, up, "library/app")
    push(two, up, "library/app")
    _ok(ls, "endpoint", "add", "up1", "--url", up.url)
    _ok(ls, "endpoint", "add", "qa1", "--url", qa.url)

    created = ls.ctl("policy", "create", "--name", "pull-app", "--source", "up1/library/app",
                     "--rule", "true", "--target", "qa1/mirror/app", "--schedule", "1s",
                     "--jitter", "200ms", "-o", "json")
    assert created.code == 0, created.stderr
    doc = created.json()
    assert doc["trigger"] == {"push": None, "manual": None, "schedule": {
        "interval": "1s", "cron": "", "jitter": "0.200s"}}

    wait_for("both upstream tags mirrored", lambda: sorted(list_tags(qa, "mirror/app")) == [
        "1.0", "1.1"])
    assert digest_of(qa, "mirror/app", "1.0") == one.digest
    assert digest_of(qa, "mirror/app", "1.1") == two.digest

    polls = wait_for("a poll that copied both", lambda: [
        p for p in ls.ctl("policy", "polls", "pull-app", "--limit", "0", "-o", "json").json()
        if p["tags_copied"] == 2])
    first = polls[0]
    assert (first["tags_listed"], first["tags_changed"], first["tags_failed"]) == (2, 2, 0)
    assert isinstance(first["requests"], int) and first["requests"] >= 3  # list + 2 HEADs
    # Later polls see nothing new: listed both, changed none.
    quiet = wait_for("an unchanged poll", lambda: [
        p for p in ls.ctl("policy", "polls", "pull-app", "-o", "json").json()
        if p["tags_listed"] == 2 and p["tags_changed"] == 0 and p["end_time"]])
    assert quiet[0]["tags_copied"] == 0
    table = _ok(ls, "policy", "polls", "pull-app", "--limit", "3")
    assert "LISTED" in table and "REQUESTS" in table
    assert len([line for line in table.splitlines() if line.strip()]) <= 3 + 2  # header

    shown = _ok(ls, "policy", "show", "pull-app")
    assert "every 1s, jitter 200ms" in shown
    assert "last poll" in shown and "2 listed" in shown and "next poll" in shown
    wide = _ok(ls, "policy", "list", "-o", "wide")
    assert "TRIGGER" in wide and "LAST POLL" in wide and "NEXT POLL" in wide
    assert "every 1s, jitter 200ms" in wide and "2 listed" in wide
    assert "every 1s" not in _ok(ls, "policy", "list")  # the plain table stays short

    # A tag moved upstream is copied again, and the run says from which digest.
    moved = images.image("1.0", layers=[12_000])
    push(moved, up, "library/app")
    wait_for("the moved tag copied again",
             lambda: digest_of(qa, "mirror/app", "1.0") == moved.digest)
    run = wait_for("the run of the moved tag", lambda: [
        r for r in _runs(ls, "pull-app")
        if r["source_digest"] == moved.digest and r["state"] == "succeeded"])[0]
    assert run["trigger"] == "schedule" and run["action"] == "copy"
    assert run["previous_digest"] == one.digest
    assert run["poll_id"] and run["cause"]
    assert {r["action"] for r in _runs(ls, "pull-app")} == {"copy"}
    runs_wide = _ok(ls, "runs", "list", "--policy", "pull-app", "-o", "wide")
    for header in ("ACTION", "CAUSE", "PREVIOUS DIGEST", "POLL"):
        assert header in runs_wide
    assert one.digest in runs_wide and run["poll_id"] in runs_wide
    assert "PREVIOUS DIGEST" not in _ok(ls, "runs", "list", "--policy", "pull-app")
    _ok(ls, "policy", "disable", "pull-app")


def test_deletions_propagate_only_when_asked(
    live: LiveStack, registry_factory: Callable[..., RegistryProcess], images: ImageBuilder,
) -> None:
    ls = live
    up, qa = registry_factory(), registry_factory()
    for tag, size in (("1", 13_000), ("2", 14_000)):
        push(images.image(tag, layers=[size]), up, "lib/a")
        push(images.image(tag, layers=[size + 500]), up, "lib/b")
    _ok(ls, "endpoint", "add", "up2", "--url", up.url)
    _ok(ls, "endpoint", "add", "qa2", "--url", qa.url)
    _ok(ls, "policy", "create", "--name", "del-on", "--source", "up2/lib/a", "--rule", "true",
        "--target", "qa2/m/a", "--schedule", "1s", "--deletions", "propagate")
    _ok(ls, "policy", "create", "--name", "del-off", "--source", "up2/lib/b", "--rule", "true",
        "--target", "qa2/m/b", "--schedule", "1s")
    assert ls.ctl("policy", "show", "del-off", "-o", "json").json()["deletions"] == "off"
    wait_for("both mirrored", lambda: sorted(list_tags(qa, "m/a")) == ["1", "2"]
             and sorted(list_tags(qa, "m/b")) == ["1", "2"])

    _delete_tag(up, "lib/a", "2")
    _delete_tag(up, "lib/b", "2")
    wait_for("the deletion propagated", lambda: sorted(list_tags(qa, "m/a")) == ["1"])
    deleted = [r for r in _runs(ls, "del-on") if r["action"] == "delete"]
    assert [(r["destination_tag"], r["state"]) for r in deleted] == [("2", "succeeded")]
    # The policy without deletions leaves its copy alone, poll after poll.
    wait_for("a later poll of del-off", lambda: [
        p for p in ls.ctl("policy", "polls", "del-off", "-o", "json").json()
        if p["tags_listed"] == 1])
    assert sorted(list_tags(qa, "m/b")) == ["1", "2"]
    assert {r["action"] for r in _runs(ls, "del-off")} == {"copy"}
    for name in ("del-on", "del-off"):
        _ok(ls, "policy", "disable", name)


def test_prune_dry_run_then_delete(
    live: LiveStack, registry_factory: Callable[..., RegistryProcess], images: ImageBuilder,
    tmp_path: Path,
) -> None:
    ls = live
    dev, qa = registry_factory(), registry_factory()
    for tag, size in (("1.0", 15_000), ("2.0", 16_000)):
        push(images.image(tag, layers=[size]), dev, "team/p")
    push(images.image("keep", layers=[17_000]), qa, "mirror/p")  # not written by the policy
    _ok(ls, "endpoint", "add", "dev3", "--url", dev.url)
    _ok(ls, "endpoint", "add", "qa3", "--url", qa.url)
    path = tmp_path / "p.yaml"
    policy = {"name": "prune-me", "source": {"endpoint": "dev3", "repository": "team/p"},
              "rule": "true", "target": {"endpoint": "qa3", "repository": "mirror/p"},
              "trigger": "manual"}
    path.write_text(yaml.safe_dump({"policies": [policy]}))
    _ok(ls, "apply", "-f", str(path))
    assert ls.ctl("policy", "get", "prune-me", "-o", "json").json()["trigger"]["manual"] == {}
    _ok(ls, "policy", "apply", "prune-me")
    wait_for("both copied", lambda: sorted(list_tags(qa, "mirror/p")) == ["1.0", "2.0", "keep"])

    policy["rule"] = 'tag == "1.0"'
    path.write_text(yaml.safe_dump({"policies": [policy]}))
    _ok(ls, "apply", "-f", str(path))
    dry = ls.ctl("policy", "prune", "prune-me", "--dry-run", "-o", "json")
    assert dry.code == 0, dry.stderr
    doc = dry.json()
    assert [(r["destination_tag"], r["action"]) for r in doc["runs"]] == [
        ("2.0", "delete_dry_run")]
    assert doc["tags_kept"] == 1
    assert sorted(list_tags(qa, "mirror/p")) == ["1.0", "2.0", "keep"]  # nothing deleted
    table = _ok(ls, "policy", "prune", "prune-me", "--dry-run")
    assert "would delete 1 tag(s), kept 1" in table and "delete_dry_run" in table

    done = _ok(ls, "policy", "prune", "prune-me")
    assert "prune-me: deleted 1 tag(s), kept 1" in done
    assert sorted(list_tags(qa, "mirror/p")) == ["1.0", "keep"]
    assert "delete" in {r["action"] for r in _runs(ls, "prune-me")}
    assert ls.ctl("policy", "prune", "no-such-policy").code == 3
