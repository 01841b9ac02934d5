"""mirrorctl with the source-scoped policy shape against a live stack and real registries:
YAML `source: {endpoint, repository}`, Save vs Save & Apply, glob mapping with `{path}`,
overwrite never, export in the new shape, the old shape refused, and `apply -f` validating
every object before it changes anything."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from registry_testkit.images import ImageBuilder, digest_of, list_tags, push
from registry_testkit.registry import RegistryProcess
from tests.clients.livestack import LiveStack, running, start_stack, wait_for

pytestmark = pytest.mark.registry


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveStack]:
    yield from running(start_stack(tmp_path))


def _ok(ls: LiveStack, *args: str, stdin: str | None = None) -> str:
    r = ls.ctl(*args, stdin=stdin)
    assert r.code == 0, f"{args}: {r.code}\n{r.stdout}\n{r.stderr}"
    return r.stdout


def _write(path: Path, doc: object) -> str:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(path)


def test_save_does_not_backfill_save_and_apply_does(
    live: LiveStack, registry_factory: Callable[..., RegistryProcess], images: ImageBuilder,
    tmp_path: Path,
) -> None:
    ls = live
    dev, qa = registry_factory(), registry_factory()
    app = images.image("1.0", layers=[20_000])
    sub = images.image("1.0", layers=[21_000])
    push(app, dev, "team/app")
    push(sub, dev, "team/sub/b")
    _ok(ls, "endpoint", "add", "dev", "--url", dev.url)
    _ok(ls, "endpoint", "add", "qa", "--url", qa.url)

    # Save: acts on pushes from now on; the tag already there is not copied, not even by a
    # reconcile (it fills in lost events since the policy was saved, never older tags).
    saved = _ok(ls, "policy", "create", "-f", _write(tmp_path / "p.yaml", {
        "name": "same-name", "source": {"endpoint": "dev", "repository": "team/app"},
        "rule": "true", "target": {"endpoint": "qa", "repository": "team/app"},
    }))
    assert "acts on pushes from now on" in saved
    reconciled = _ok(ls, "reconcile", "--policy", "same-name")
    assert "same-name: " in reconciled and " 0 runs started" in reconciled
    assert ls.ctl("runs", "list", "--policy", "same-name", "-o", "json").json() == []
    assert list_tags(qa, "team/app") == []

    # Save & Apply with a glob mapped by {path}: each source repository to its own
    # destination, none overwriting another.
    applied = ls.ctl("policy", "create", "--name", "mirror-team", "--source", "dev/team/**",
                     "--rule", 'tag == "1.0"', "--target", "qa/mirror/{path}",
                     "--overwrite", "never", "--apply", "-o", "json")
    assert applied.code == 0, applied.stderr
    doc = applied.json()
    assert doc["policy"]["source"] == {"endpoint": "dev", "repository": "team/**"}
    assert doc["policy"]["overwrite"] == "never"
    assert (doc["applied"]["tags_evaluated"], doc["applied"]["tags_matched"]) == (2, 2)
    assert doc["applied"]["errors"] == []
    wait_for("both repositories mirrored", lambda: (
        list_tags(qa, "mirror/app") == ["1.0"] and list_tags(qa, "mirror/sub/b") == ["1.0"]
    ))
    assert digest_of(qa, "mirror/app", "1.0") == app.digest
    assert digest_of(qa, "mirror/sub/b", "1.0") == sub.digest

    shown = ls.ctl("policy", "show", "mirror-team", "-o", "json").json()
    assert (shown["enabled"], shown["allow_incomplete_facts"], shown["overwrite"]) == (
        True, False, "never")
    assert shown["active_since"]
    wide = _ok(ls, "policy", "list", "-o", "wide")
    assert "OVERWRITE" in wide and "never" in wide and "ACTIVE SINCE" in wide
    assert "OVERWRITE" not in _ok(ls, "policy", "list")
    only_dev = ls.ctl("policy", "list", "--source", "dev/team/app", "-o", "json").json()
    assert {p["name"] for p in only_dev} == {"same-name", "mirror-team"}
    assert ls.ctl("policy", "list", "--source", "qa/team/app", "-o", "json").json() == []

    # export writes the new shape, and the file it writes applies as "unchanged".
    exported = yaml.safe_load(_ok(ls, "export"))
    by_name = {p["name"]: p for p in exported["policies"]}
    assert by_name["mirror-team"]["source"] == {"endpoint": "dev", "repository": "team/**"}
    assert by_name["mirror-team"]["target"] == {"endpoint": "qa", "repository": "mirror/{path}"}
    assert by_name["mirror-team"]["overwrite"] == "never"
    assert by_name["same-name"]["overwrite"] == "always"
    assert all("sourceRepository" not in p for p in exported["policies"])
    round_trip = _write(tmp_path / "exported.yaml", exported)
    plan = ls.ctl("apply", "-f", round_trip, "--dry-run", "-o", "json")
    assert plan.code == 0, plan.stderr
    assert {c["action"] for c in plan.json()["changes"]} == {"unchanged"}
    assert plan.json()["errors"] == []


def test_old_policy_files_get_the_new_field_named(live: LiveStack, registry, tmp_path: Path
                                                  ) -> None:
    ls = live
    _ok(ls, "endpoint", "add", "dev", "--url", registry.url)
    old = {"name": "p", "sourceRepository": "team/website", "rule": "true",
           "target": {"endpoint": "dev", "repository": "team/copy"}}
    refused = ls.ctl("policy", "create", "-f", _write(tmp_path / "old.yaml", old))
    assert refused.code == 4, refused.stdout + refused.stderr
    assert "sourceRepository was replaced by source: {endpoint, repository}" in refused.stderr
    assert "source: {endpoint: ENDPOINT, repository: team/website}" in refused.stderr
    in_apply = ls.ctl("apply", "-f", _write(tmp_path / "m.yaml", {"policies": [old]}))
    assert in_apply.code == 4 and "policies[0]: sourceRepository was replaced" in in_apply.stderr
    # The flag form names the endpoint too: a bare repository is not ENDPOINT/REPOSITORY.
    bare = ls.ctl("policy", "create", "--name", "p", "--source", "website", "--rule", "true",
                  "--target", "dev/team/copy")
    assert bare.code == 2 and "ENDPOINT/REPOSITORY" in bare.stderr
    assert ls.ctl("policy", "list", "-o", "json").json() == []


def test_apply_validates_everything_before_changing_anything(
    live: LiveStack, registry_factory: Callable[..., RegistryProcess], tmp_path: Path,
) -> None:
    ls = live
    dev, qa, prod = registry_factory(), registry_factory(), registry_factory()
    _ok(ls, "endpoint", "add", "dev", "--url", dev.url)
    _ok(ls, "endpoint", "add", "qa", "--url", qa.url)
    before = ls.ctl("export", "-o", "json").json()
    good = {"name": "good", "source": {"endpoint": "dev", "repository": "team/app"},
            "rule": 'tag endswith "stable"', "target": {"endpoint": "qa", "repository": "team/app"}}
    bad_rule = {**good, "name": "bad-rule", "rule": "tag endswith",
                "source": {"endpoint": "dev", "repository": "team/api"},
                "target": {"endpoint": "qa", "repository": "team/api"}}
    new_prod = {"name": "prod", "url": prod.url}
    doc = {"endpoints": [new_prod], "policies": [good, bad_rule]}
    path = _write(tmp_path / "m.yaml", doc)

    dry = ls.ctl("apply", "-f", path, "--dry-run", "-o", "json")
    assert dry.code == 4, dry.stderr
    assert [(e["kind"], e["name"]) for e in dry.json()["errors"]] == [("policy", "bad-rule")]
    assert "rule" in dry.json()["errors"][0]["message"]
    real = ls.ctl("apply", "-f", path)
    assert real.code == 4 and "nothing was changed" in real.stderr
    assert "error: policy bad-rule: " in real.stderr
    assert ls.ctl("export", "-o", "json").json() == before  # not even the good ones

    # A policy naming an endpoint that neither exists nor is declared; one registry under two
    # endpoint names; a bad name and URL, and a CA that is no certificate (both checked by
    # the server, validate_only); an alias naming a registered registry (dev) again; a tag
    # template that can never make a tag.
    doc = {"endpoints": [new_prod, {"name": "prod-again", "url": prod.url + "/"},
                         {"name": "Bad_Name", "url": "ftp://x"},
                         {"name": "dev-alias", "url": "http://127.0.0.1:1",
                          "aliases": [dev.host]},
                         {"name": "bad-ca", "url": "https://127.0.0.1:2",
                          "caPem": "-----BEGIN CERTIFICATE-----\nnot one\n"}],
           "policies": [{**good, "target": {"endpoint": "nope", "repository": "team/app"}},
                        {**good, "name": "bad-template", "tagTemplate": "%n!"}]}
    dry = ls.ctl("apply", "-f", _write(tmp_path / "m2.yaml", doc), "--dry-run", "-o", "json")
    assert dry.code == 4
    found = [(e["kind"], e["name"], e["message"]) for e in dry.json()["errors"]]
    assert [f[:2] for f in found] == [
        ("endpoint", "Bad_Name"), ("endpoint", "bad-ca"), ("endpoint", "dev-alias"),
        ("endpoint", "prod-again"), ("policy", "good"), ("policy", "bad-template")]
    assert "not a valid name" in found[0][2] and "endpoint.url" in found[0][2]
    assert "endpoint.ca_pem" in found[1][2]
    assert "endpoints dev, dev-alias name one registry" in found[2][2]
    assert "endpoints prod, prod-again name one registry" in found[3][2]
    assert "unknown endpoint(s) nope" in found[4][2]
    assert "'!' can never appear in a tag" in found[5][2]
    assert ls.ctl("export", "-o", "json").json() == before

    # Valid: a policy on an endpoint the same file creates.
    doc = {"endpoints": [new_prod], "policies": [
        good, {**good, "name": "to-prod", "source": {"endpoint": "qa", "repository": "team/app"},
               "target": {"endpoint": "prod", "repository": "team/app"}}]}
    path = _write(tmp_path / "m3.yaml", doc)
    assert ls.ctl("apply", "-f", path, "--dry-run").code == 0
    done = ls.ctl("apply", "-f", path)
    assert done.code == 0, done.stderr
    assert {p["name"] for p in ls.ctl("policy", "list", "-o", "json").json()} == {"good",
                                                                                  "to-prod"}

    # --prune would delete prod while to-prod... is pruned too: fine. Keeping to-prod but
    # dropping its endpoint is refused before anything is deleted.
    doc = {"endpoints": [{"name": "dev", "url": dev.url}, {"name": "qa", "url": qa.url}],
           "policies": [good, doc["policies"][1]]}
    pruned = ls.ctl("apply", "-f", _write(tmp_path / "m4.yaml", doc), "--prune", "-o", "json")
    assert pruned.code == 4
    assert [e["message"] for e in pruned.json()["errors"]] == [
        "cannot be deleted: used by policies to-prod"]
    assert "prod" in {e["name"] for e in ls.ctl("endpoint", "list", "-o", "json").json()}

    # The server refuses the same by hand: an endpoint a policy uses cannot be removed.
    rm = ls.ctl("endpoint", "rm", "prod")
    assert rm.code == 4, rm.stdout + rm.stderr
    assert "to-prod" in rm.stderr
