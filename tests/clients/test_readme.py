"""README.md's SDK, grpcurl and mirrorctl sections run verbatim against a live mirror-stack.

Only the environment differs from a user's: MIRROR_ADDRESS points at the test's stack, the
registry URLs at the test's registries.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from mirror.client import connect

from registry_testkit.images import ImageBuilder, LayerSpec, digest_of, list_tags, push
from registry_testkit.registry import RegistryProcess
from tests.clients.docs_blocks import blocks, json_stream, run_bash
from tests.clients.livestack import ADMIN_TOKEN, ROOT, LiveStack, running, start_stack, wait_for
from tests.e2e.signing import ANNOTATION, new_key, public_pem, signature_image, verify
from tests.scanner.layerkit import ALPINE_INSTALLED, ALPINE_OS_RELEASE

pytestmark = pytest.mark.registry

QA_USER = "ci"  # the README's session logs in as ci
QA_PASSWORD = "qa-password-" + "e61b07c2"


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveStack]:
    yield from running(start_stack(tmp_path))


def _shell_env(live: LiveStack, home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIRROR_")}
    env.update(PATH=f"{ROOT / '.venv/bin'}:{os.environ['PATH']}", HOME=str(home),
               MIRROR_ADDRESS=live.address, MIRROR_TOKEN=ADMIN_TOKEN, **extra)
    return env


def _run_blocks(code: list[str], env: dict[str, str], cwd: Path) -> list[str]:
    outputs = []
    for i, block in enumerate(code):
        res = run_bash(block, env, cwd)
        assert res.returncode == 0, f"block {i + 1} failed:\n{block}\n{res.stdout}\n{res.stderr}"
        outputs.append(res.stdout)
    return outputs


def test_readme_sdk_examples(
    live: LiveStack, registry: RegistryProcess, images: ImageBuilder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    image = images.image("1.0", layers=[30_000])
    push(image, registry, "team/app")
    monkeypatch.setenv("MIRROR_ADDRESS", live.address)
    monkeypatch.setenv("MIRROR_TOKEN", ADMIN_TOKEN)
    monkeypatch.setenv("DEV_REGISTRY_URL", registry.url)

    code = blocks("README.md", "python", section="Using the Python SDK")
    assert len(code) == 3
    namespace: dict[str, object] = {"__name__": "readme_sdk"}
    out = io.StringIO()
    for i, block in enumerate(code):
        with contextlib.redirect_stdout(out):
            try:
                exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)
            except Exception as exc:
                raise AssertionError(f"README block {i + 1} failed: {exc!r}\n{block}") from exc
    printed = out.getvalue().splitlines()
    assert any(line.startswith("policy.rule -> line 1, column ") for line in printed), printed
    assert "1 of 1 tags matched" in printed
    assert digest_of(registry, "team/app-mirror", "1.0") == image.digest
    with connect(live.address, token=ADMIN_TOKEN) as c:
        assert [p.name for p in c.policies.iter()] == ["copy-app"]  # "broken" was refused
        runs = wait_for("the applied policy's run to succeed", lambda: [
            r for r in c.gateway.iter_runs() if r.state == r.STATE_SUCCEEDED
        ])
    assert runs[0].policy_name == "copy-app"
    assert digest_of(registry, "team/app-copy", "1.0") == image.digest


def test_readme_grpcurl_commands(
    live: LiveStack, registry: RegistryProcess, images: ImageBuilder, tmp_path: Path
) -> None:
    image = images.image("1.0-stable", layers=[20_000])
    push(image, registry, "team/app")
    work = tmp_path / "work"
    work.mkdir()
    code = blocks("README.md", "sh", section="Operating with grpcurl")
    assert len(code) == 4
    listing, created, watched, notified = _run_blocks(
        code, _shell_env(live, tmp_path, DEV_REGISTRY_URL=registry.url), work
    )
    assert {"mirror.v1.PolicyService", "mirror.v1.TransferService", "mirror.v1.GatewayService",
            "mirror.v1.ScanService", "grpc.health.v1.Health"} <= set(listing.split())
    endpoint, applied = json_stream(created)
    assert endpoint["name"] == "dev" and endpoint["url"] == registry.url
    policy = json_stream((work / "policy.json").read_text())[0]
    assert policy["name"] == "promote-stable" and policy["id"]
    assert policy["source"] == {"endpoint": "dev", "repository": "team/app"}
    assert policy["overwrite"] == "OVERWRITE_NEVER"
    # Save & Apply: the tag already in the repository was evaluated and matched.
    assert (applied["tags_evaluated"], applied["tags_matched"]) == (1, 1)
    snapshots = json_stream(watched)
    assert snapshots[-1]["state"] == "STATE_DONE"
    assert digest_of(registry, "team/app-copy", "1.0-stable") == image.digest
    event, runs_page = json_stream(notified)
    assert event["event_id"]
    assert isinstance(runs_page, dict)
    with connect(live.address, token=ADMIN_TOKEN) as c:
        runs = wait_for("the reported push to be mirrored", lambda: [
            r for r in c.gateway.iter_runs() if r.state == r.STATE_SUCCEEDED
        ])
    assert runs[0].policy_name == "promote-stable"
    assert digest_of(registry, "team/app-promoted", "1.0-stable") == image.digest


def test_readme_mirrorctl_session(
    live: LiveStack, registry_factory, images: ImageBuilder, tmp_path: Path
) -> None:
    dev = registry_factory()
    qa = registry_factory(tls=True, htpasswd_users={QA_USER: QA_PASSWORD})
    # A package database the scanner recognises: `critical_vulns == 0` can be decided.
    image = images.image("1.4-stable", layers=[LayerSpec(files={
        "etc/os-release": ALPINE_OS_RELEASE, "lib/apk/db/installed": ALPINE_INSTALLED,
    }), 10_000])
    push(image, dev, "team/website")
    work = tmp_path / "work"
    work.mkdir()
    (work / "qa-ca.pem").write_text(qa.ca_pem)
    # OSV records (this one is fixed in the image's libcrypto3: no vulnerability matches).
    with zipfile.ZipFile(work / "osv.zip", "w") as zf:
        osv = ROOT / "tests/scanner/osv/CVE-2024-0727.json"
        zf.writestr(osv.name, osv.read_bytes())
    env = _shell_env(live, tmp_path, DEV_REGISTRY_URL=dev.url, QA_REGISTRY_URL=qa.url,
                     QA_PASSWORD=QA_PASSWORD)
    code = blocks("README.md", "sh", section="Operating with mirrorctl")
    assert len(code) == 6
    results = []
    for i, block in enumerate(code):
        res = run_bash(block, env, work)
        assert res.returncode == 0, f"block {i + 1} failed:\n{block}\n{res.stdout}\n{res.stderr}"
        results.append(res)
    endpoints, policy, watch, ci, plan, edited = (r.stdout for r in results)
    assert "endpoint qa added" in endpoints
    assert "authenticated │ ok" in endpoints and "push_allowed  │ ok" in endpoints
    assert "imported 1, updated 0, skipped 0" in endpoints
    source_row = next(line for line in endpoints.splitlines() if "Alpine:v3.19" in line)
    assert source_row.split("│")[1].strip() == "1"  # vulndb status: the source, 1 record
    assert "policy promote-stable created" in policy
    assert "dev/team/website:1.4-stable: MATCHES" in policy
    assert "critical_vulns == 0" in policy  # explain scanned the image for this clause
    assert "1 tags evaluated, 1 matched, 1 runs started" in policy
    assert "PROVENANCE" in policy  # runs list -o wide
    last = watch.strip().splitlines()[-1]
    assert " done " in last and image.digest in last
    assert digest_of(qa, "team/website", "1.4-hotfix", user=QA_USER) == image.digest
    assert "push of team/website:1.4-stable on dev reported (event " in ci
    assert "promote-stable: " in ci and "tags checked" in ci
    assert ci.count("serving") == 4
    assert "0 to create, 1 to update, 0 to delete, 2 unchanged (dry run" in plan
    with connect(live.address, token=ADMIN_TOKEN) as c:
        (pol,) = list(c.policies.iter())
        assert pol.tag_template == "%n"  # the dry run changed nothing
        # The -o json document edited and applied back: that one field changed.
        assert "1 to update, 0 to delete, 0 unchanged" in edited
        assert "updated policy promote-stable" in edited
        assert (pol.description, pol.rule) == ("promoted by CI",
                                               'tag endswith "stable" and critical_vulns == 0')
        wait_for("the applied run to succeed", lambda: [
            r for r in c.gateway.iter_runs() if r.state == r.STATE_SUCCEEDED
        ])
    assert digest_of(qa, "team/website", "1.4-stable", user=QA_USER) == image.digest
    exported = (work / "mirror.yaml").read_text()
    assert "MIRROR_SECRET_QA" in exported
    for text in [exported, live.log, *(r.stdout + r.stderr for r in results)]:
        assert QA_PASSWORD not in text and ADMIN_TOKEN not in text


def test_readme_pull_mirror_and_signatures_session(
    live: LiveStack, registry_factory, images: ImageBuilder, tmp_path: Path
) -> None:
    hub, local = registry_factory(), registry_factory()  # the upstream sends no events
    pushed = {}
    for i, tag in enumerate(("1.24.0", "1.25.0", "1.26.0", "1.27.0", "1.27.1", "2.0.0")):
        pushed[tag] = push(images.image(tag, layers=[5_000 + i]), hub, "library/nginx")
    ci = new_key("ecdsa")
    app = images.image("1.0", layers=[9_000])
    sig = signature_image(tmp_path, "team/app", app.digest, ci)
    push(app, local, "team/app")
    push(sig, local, "team/app")
    work = tmp_path / "work"
    work.mkdir()
    (work / "cosign.pub").write_text(public_pem(ci))
    env = _shell_env(live, tmp_path, HUB_REGISTRY_URL=hub.url, LOCAL_REGISTRY_URL=local.url)
    code = blocks("README.md", "sh", section="Pull mirrors, deletions and signatures")
    assert len(code) == 4

    def run(i: int) -> str:
        res = run_bash(code[i], env, work)
        assert res.returncode == 0, f"block {i + 1} failed:\n{code[i]}\n{res.stdout}\n{res.stderr}"
        return res.stdout + res.stderr

    def tags(repo: str) -> list[str]:
        return sorted(list_tags(local, repo))

    assert "created policy pull-nginx" in run(0)
    # The first poll: the newest 3 tags matching >=1.25 <2, with the upstream digests.
    wait_for("the first poll's copies", lambda: tags("mirror/nginx") == [
        "1.26.0", "1.27.0", "1.27.1"])
    for tag in ("1.26.0", "1.27.0", "1.27.1"):
        assert digest_of(local, "mirror/nginx", tag) == pushed[tag]
    wait_for("the poll recorded", lambda: "3 copied" in run(1))
    shown = run(1)
    assert "every 30s, jitter 5s" in shown and "LISTED" in shown and "6 listed" in shown
    assert "PREVIOUS DIGEST" in shown and "schedule" in shown

    pruned = run(2)
    assert "pull-nginx: would delete 1 tag(s), kept 2 (dry run" in pruned
    assert "pull-nginx: deleted 1 tag(s), kept 2" in pruned
    assert tags("mirror/nginx") == ["1.27.0", "1.27.1"]

    signed = run(3)
    assert "trusted key ci added (ecdsa-p256" in signed
    assert "created policy promote-signed" in signed
    wait_for("the signed image with its signature", lambda: tags("prod/app") == ["1.0", sig.tag])
    assert digest_of(local, "prod/app", "1.0") == app.digest
    assert digest_of(local, "prod/app", sig.tag) == sig.digest
    req = urllib.request.Request(f"{local.url}/v2/prod/app/manifests/{sig.tag}", headers={
        "Accept": "application/vnd.oci.image.manifest.v1+json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        layer = json.loads(resp.read())["layers"][0]
    with urllib.request.urlopen(f"{local.url}/v2/prod/app/blobs/{layer['digest']}",
                                timeout=10) as resp:
        assert verify(public_pem(ci), resp.read(), layer["annotations"][ANNOTATION])
