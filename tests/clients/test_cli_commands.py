"""mirrorctl commands against a live stack: vulndb, scan, transfer start/cancel, policy and
endpoint lifecycles, with the documented exit codes (subprocess, real registries, skopeo)."""

from __future__ import annotations

import io
import json
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from registry_testkit.faultproxy import FaultProxy
from registry_testkit.images import ImageBuilder, LayerSpec, digest_of, list_tags, push
from registry_testkit.registry import RegistryProcess
from tests.clients.livestack import (
    READ_TOKEN,
    ROOT,
    LiveStack,
    running,
    start_stack,
    wait_for,
)
from tests.scanner.layerkit import ALPINE_INSTALLED, ALPINE_OS_RELEASE

pytestmark = pytest.mark.registry

OSV = ROOT / "tests/scanner/osv"
QA_USER, QA_SECRET = "ci", "qa-secret-" + "90d1e4b7"
# CVE-2024-0727 is fixed in openssl 3.1.4-r5 on Alpine 3.19: r4 is affected.
VULNERABLE_APK = ALPINE_INSTALLED + b"\nP:openssl\nV:3.1.4-r4\nA:x86_64\nL:Apache-2.0\no:openssl\n"


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveStack]:
    yield from running(start_stack(tmp_path))


def _ok(ls: LiveStack, *args: str, stdin: str | None = None) -> str:
    r = ls.ctl(*args, stdin=stdin)
    assert r.code == 0, f"{args}: {r.code}\n{r.stdout}\n{r.stderr}"
    return r.stdout


def _transfer_state(ls: LiveStack, transfer_id: str) -> str:
    return str(ls.ctl("transfer", "show", transfer_id, "-o", "json").json()["state"])


def test_vulndb_import_and_scan(
    live: LiveStack, registry: RegistryProcess, images: ImageBuilder, tmp_path: Path
) -> None:
    ls = live
    image = images.image("3.19", layers=[LayerSpec(files={
        "etc/os-release": ALPINE_OS_RELEASE, "lib/apk/db/installed": VULNERABLE_APK,
    })])
    push(image, registry, "team/alpine")
    _ok(ls, "endpoint", "add", "dev", "--url", registry.url)

    one = _ok(ls, "vulndb", "import", str(OSV / "CVE-2024-0727.json"))
    assert one.startswith("imported 1, updated 0, skipped 0; database version ")
    scanned = _ok(ls, "scan", "image", "dev/team/alpine:3.19", "--vulns")
    assert image.digest in scanned and "Alpine Linux v3.19" in scanned
    assert "0 critical, 1 major, 0 minor, 1 in all" in scanned
    row = next(line for line in scanned.splitlines() if "CVE-2024-0727" in line)
    assert [c.strip() for c in row.split("│")[3:6]] == ["openssl", "3.1.4-r4", "3.1.4-r5"]
    # The whole fixture folder as a zip: the record already there is skipped.
    records = sorted(OSV.glob("*.json"))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path in records:
            zf.writestr(path.name, path.read_bytes())
    archive = tmp_path / "osv.zip"
    archive.write_bytes(buf.getvalue())
    many = ls.ctl("vulndb", "import", str(archive))
    assert many.code == 0, many.stderr
    assert many.stdout.startswith(f"imported {len(records) - 1}, updated 0, skipped 1;")
    bad = ls.ctl("vulndb", "import", "-", stdin="not json")
    assert bad.code == 4 and "not JSON" in bad.stdout
    assert ls.ctl("vulndb", "import", str(tmp_path / "missing.json")).code == 2
    denied = ls.ctl("vulndb", "import", str(OSV / "CVE-2024-0727.json"), token=READ_TOKEN)
    assert denied.code == 1 and "admin token" in denied.stderr

    # With the newer records the same image has more to report, once scanned again.
    rescanned = _ok(ls, "scan", "image", "dev/team/alpine:3.19", "--vulns", "--force")
    assert "CVE-2024-2511" in rescanned and "CVE-2024-0727" in rescanned
    report = json.loads(_ok(ls, "scan", "show", image.digest, "--components", "-o", "json"))
    assert report["digest"] == image.digest
    assert {"openssl", "musl", "busybox"} <= {c["name"] for c in report["components"]}
    assert "CVE-2024-2511" in {v["id"] for v in report["vulnerabilities"]}
    by_repo = json.loads(
        _ok(ls, "scan", "show", image.digest, "--repository", "team/alpine", "-o", "json")
    )
    assert by_repo["digest"] == image.digest and by_repo["repository"] == "team/alpine"
    other = ls.ctl("scan", "show", image.digest, "--repository", "team/elsewhere")
    assert other.code == 3, other.stdout
    missing = ls.ctl("scan", "show", "sha256:" + "0" * 64)
    assert missing.code == 3 and "no scan of" in missing.stderr
    assert ls.ctl("scan", "image", "dev/team/nothing-here:1").code != 0


def test_policy_lifecycle_and_rule_errors(
    live: LiveStack, registry_factory: Callable[..., RegistryProcess], images: ImageBuilder,
) -> None:
    ls = live
    dev, qa = registry_factory(), registry_factory()
    stable = images.image("1.0-stable", layers=[20_000])
    push(stable, dev, "team/app")
    push(images.image("1.0-dev", layers=[20_000]), dev, "team/app")
    _ok(ls, "endpoint", "add", "dev", "--url", dev.url)
    _ok(ls, "endpoint", "add", "qa", "--url", qa.url)

    bad = ls.ctl("policy", "create", "--name", "p", "--source", "dev/team/app", "--target",
                 "qa/team/app", "--rule", 'tag endswith "stable" and\n  size > "big"')
    assert bad.code == 4, bad.stdout + bad.stderr
    lines = bad.stderr.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("rule:2:"))
    assert lines[at + 1] == '    size > "big"'
    assert lines[at + 2].strip().startswith("^")
    assert ls.ctl("policy", "list", "-o", "json").json() == []  # nothing was saved

    _ok(ls, "policy", "create", "--name", "p", "--source", "dev/team/app", "--target",
        "qa/team/app", "--rule", 'tag endswith "stable"', "--disabled")
    refused = ls.ctl("policy", "apply", "p")
    assert refused.code == 4 and "disabled" in refused.stderr
    assert "policy p enabled" in _ok(ls, "policy", "enable", "p")
    assert ls.ctl("policy", "show", "p", "-o", "json").json()["enabled"] is True
    applied = _ok(ls, "policy", "apply", "p")
    # Every evaluated tag records a run; only the matching one copies.
    assert "p: 2 tags evaluated, 1 matched, 2 runs started" in applied
    runs = wait_for("the applied run to succeed", lambda: [
        r for r in ls.ctl("runs", "list", "--policy", "p", "-o", "json").json()
        if r["state"] == "succeeded"
    ])
    assert [r["source"]["reference"] for r in runs] == ["1.0-stable"]
    skipped = ls.ctl("runs", "list", "--policy", "p", "--state", "not_matched", "-o", "json")
    assert [r["source"]["reference"] for r in skipped.json()] == ["1.0-dev"]
    assert list_tags(qa, "team/app") == ["1.0-stable"]
    assert digest_of(qa, "team/app", "1.0-stable") == stable.digest

    assert "policy p disabled" in _ok(ls, "policy", "disable", "p")
    assert ls.ctl("policy", "show", "p", "-o", "json").json()["enabled"] is False
    assert "removed" in _ok(ls, "policy", "rm", "p")
    for args in (("policy", "show", "p"), ("policy", "rm", "p"), ("policy", "enable", "p"),
                 ("policy", "apply", "p")):
        gone = ls.ctl(*args)
        assert gone.code == 3, (args, gone.stderr)
        assert "policy list" in gone.stderr


def test_endpoint_update_and_rm(
    live: LiveStack, registry_factory: Callable[..., RegistryProcess]
) -> None:
    ls = live
    qa = registry_factory(htpasswd_users={QA_USER: QA_SECRET})
    _ok(ls, "endpoint", "add", "qa", "--url", qa.url)
    check = ("endpoint", "test", "qa", "--repository", "team/app", "--push")
    assert ls.ctl(*check).code == 1  # no credentials yet: the registry refuses

    updated = _ok(ls, "endpoint", "update", "qa", "--username", QA_USER, "--secret-stdin",
                  "--max-concurrency", "4", "--alias", "registry.qa.example",
                  stdin=QA_SECRET + "\n")
    assert "endpoint qa updated" in updated
    shown = ls.ctl("endpoint", "show", "qa", "-o", "json").json()
    assert (shown["username"], shown["has_secret"], shown["max_concurrency"],
            shown["aliases"]) == (QA_USER, True, 4, ["registry.qa.example"])
    assert "secret" not in shown
    tested = ls.ctl(*check)
    assert tested.code == 0 and "authenticated" in tested.stdout
    # Fields not given keep their value.
    _ok(ls, "endpoint", "update", "qa", "--requests-per-second", "5")
    again = ls.ctl("endpoint", "show", "qa", "-o", "json").json()
    assert (again["max_concurrency"], again["requests_per_second"]) == (4, 5)

    assert "endpoint qa removed" in _ok(ls, "endpoint", "rm", "qa")
    for args in (("endpoint", "show", "qa"), ("endpoint", "rm", "qa"),
                 ("endpoint", "update", "qa", "--max-concurrency", "2")):
        assert ls.ctl(*args).code == 3, args
    assert ls.ctl("endpoint", "list", "-o", "json").json() == []
    for out in ls.outputs:
        assert QA_SECRET not in out
    assert QA_SECRET not in ls.log


def test_transfer_start_and_cancel(
    live: LiveStack, registry_factory: Callable[..., RegistryProcess],
    fault_proxy: Callable[[str], FaultProxy], images: ImageBuilder,
) -> None:
    ls = live
    dev, qa = registry_factory(), registry_factory()
    image = images.image("1.0", layers=[30_000, 20_000])
    push(image, dev, "team/app")
    slow = fault_proxy(dev.url)
    slow.delay(r"/blobs/sha256:", 10.0, method="GET")  # every source blob read stalls
    _ok(ls, "endpoint", "add", "slow", "--url", slow.url)
    _ok(ls, "endpoint", "add", "dev", "--url", dev.url)
    _ok(ls, "endpoint", "add", "qa", "--url", qa.url)

    started = ls.ctl("transfer", "start", "slow/team/app:1.0", "--to", "qa/team/app",
                     "-o", "json")
    assert started.code == 0, started.stderr
    tid = started.json()["id"]
    wait_for("the copy to be reading blobs", lambda: (
        _transfer_state(ls, tid) == "running" and slow.requests("GET", r"/blobs/")
    ), timeout=30)
    began = time.monotonic()
    canceled = _ok(ls, "transfer", "cancel", tid)
    assert tid in canceled
    wait_for("the transfer to be canceled", lambda: _transfer_state(ls, tid) ==
             "canceled", timeout=10)
    assert time.monotonic() - began < 6  # well before the stalled reads would finish
    watched = ls.ctl("transfer", "watch", tid)
    assert watched.code == 1  # documented: 1 when the transfer was canceled
    assert " canceled " in watched.stdout.strip().splitlines()[-1] + " "
    assert list_tags(qa, "team/app") == []
    assert ls.ctl("transfer", "cancel", "no-such-transfer").code == 3
    unknown = ls.ctl("transfer", "start", "nope/team/app:1.0", "--to", "qa/team/app")
    assert unknown.code == 4 and "unknown endpoint(s): nope" in unknown.stderr  # precondition

    # The same image from the direct endpoint, followed to the end.
    direct = ls.ctl("transfer", "start", "dev/team/app:1.0", "--to", "qa/team/app:1.0-copy",
                    "--watch")
    assert direct.code == 0, direct.stdout + direct.stderr
    assert " done " in direct.stdout.strip().splitlines()[-1]
    assert digest_of(qa, "team/app", "1.0-copy") == image.digest
