"""docs/operating.md runs verbatim: real docker-registry processes and a real mirror-stack,
started by the guide's own blocks, on free ports given through the guide's own variables.

Each `sh` block runs as `bash -euo pipefail` in one work folder; the variables a block
exports and its umask are carried into the next ones, as in the one shell the guide is
written for. Between blocks the test waits for what a person would wait for (a push to be
mirrored, an event to arrive), with deadlines. Also here: `python -m transfer_service.rotate`
on its own, the guide's links, and the example systemd unit.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from registry_testkit.images import ImageBuilder, LayerSpec
from registry_testkit.ports import free_port
from servicekit import datadir
from stack import __main__ as stack_main
from tests.clients.docs_blocks import blocks, run_bash
from tests.clients.livestack import wait_for
from tests.scanner.layerkit import ALPINE_INSTALLED, ALPINE_OS_RELEASE
from transfer_service import rotate
from transfer_service.secrets import SecretBox, SecretKeyError

ROOT = Path(__file__).resolve().parents[2]
GUIDE = "operating.md"
MANIFEST_TYPES = ", ".join([
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
])
# The variables the guide's Settings block defines: the test gives the inputs, the block the rest.
SETTINGS = {"MIRROR_SRC", "PATH", "DEV_PORT", "QA_PORT", "MIRROR_GRPC_PORT", "MIRROR_HTTP_PORT",
            "MIRROR_ADDRESS"}
PID_FILES = ("mirror-stack.pid", "registry-dev.pid", "registry-qa.pid")


class Guide:
    """Runs the guide's blocks section by section, carrying exported variables along."""

    def __init__(self, work: Path, env: dict[str, str]) -> None:
        self.work = work
        self.env = env
        self.umask = "0022"
        self.outputs: list[str] = []

    def section(self, heading: str) -> list[str]:
        """Run every sh block under `## heading`; their outputs, in order."""
        code = blocks(GUIDE, "sh", section=heading)
        assert code, f"no sh block under '## {heading}'"
        return [self.run(block, f"{heading} block {i + 1}") for i, block in enumerate(code)]

    def run(self, block: str, where: str) -> str:
        exported, mask = self.work / ".exported-env", self.work / ".umask"
        # The block as written, between the shell state the blocks before it left (exported
        # variables and umask: a shell of its own per block, so the next block sees what the
        # guide's one shell would).
        script = f'umask {self.umask}\n{block}\nenv -0 > "{exported}"; umask > "{mask}"\n'
        res = run_bash(script, self.env, self.work, timeout=180)
        self.outputs += [res.stdout, res.stderr]
        assert res.returncode == 0, f"{where} failed:\n{block}\n{res.stdout}\n{res.stderr}"
        self.env = dict(
            item.split("=", 1) for item in exported.read_text().split("\0") if "=" in item
        )
        self.umask = mask.read_text().strip()
        exported.unlink()
        mask.unlink()
        return res.stdout


def _manifest_digest(port: int, repository: str, tag: str) -> str:
    """sha256 of the manifest as the registry stores it ('' while the tag does not exist)."""
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v2/{repository}/manifests/{tag}",
        headers={"Accept": MANIFEST_TYPES},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return "sha256:" + hashlib.sha256(resp.read()).hexdigest()
    except urllib.error.HTTPError as err:
        if err.code == 404:
            return ""
        raise


def _healthz(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as resp:
        doc: dict[str, Any] = json.loads(resp.read())
    return doc


def _skopeo_push(work: Path, host: str, reference: str) -> None:
    subprocess.run(
        ["skopeo", "copy", "--quiet", "--dest-tls-verify=false", "oci:website.oci:latest",
         f"docker://{host}/{reference}"],
        cwd=work, check=True, capture_output=True, timeout=120,
    )


def _mirrored(port: int, tag: str, digest: str) -> Callable[[], bool]:
    return lambda: _manifest_digest(port, "qa/website", tag) == digest


def _stop_started(work: Path) -> None:
    """Stop what the guide started and is still running (by its pid files only)."""
    for name in PID_FILES:
        path = work / name
        if not path.exists():
            continue
        pid = int(path.read_text().strip())
        with contextlib.suppress(ProcessLookupError, FileNotFoundError):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"mirror-stack" in cmdline or b"docker-registry" in cmdline:
                os.kill(pid, signal.SIGTERM)
                wait_for(f"pid {pid} to exit", _exited([pid]), timeout=20)


def _running(pid: int) -> bool:
    """The process exists and is not a zombie (its parent shell is gone: init reaps it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _exited(pids: list[int]) -> Callable[[], bool]:
    return lambda: not any(_running(p) for p in pids)


@pytest.fixture
def work(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "work"
    folder.mkdir()
    try:
        yield folder
    finally:
        _stop_started(folder)


@pytest.mark.registry
def test_operating_guide_runs_verbatim(work: Path, tmp_path: Path) -> None:
    # What the guide says the reader brings: an image as an OCI layout (with a package
    # database the scanner recognises, so `critical_vulns == 0` is decided) and OSV records.
    image = ImageBuilder(work).image("latest", name="website.oci", layers=[LayerSpec(files={
        "etc/os-release": ALPINE_OS_RELEASE, "lib/apk/db/installed": ALPINE_INSTALLED,
    }), 10_000])
    with zipfile.ZipFile(work / "osv.zip", "w") as zf:
        osv = ROOT / "tests/scanner/osv/CVE-2024-0727.json"
        zf.writestr(osv.name, osv.read_bytes())
    dev, qa, grpc, http = (free_port() for _ in range(4))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIRROR_")}
    env.update(HOME=str(tmp_path), MIRROR_SRC=str(ROOT), DEV_PORT=str(dev), QA_PORT=str(qa),
               MIRROR_GRPC_PORT=str(grpc), MIRROR_HTTP_PORT=str(http))
    guide = Guide(work, env)

    # Every sh block is in a section this test runs, or in Install (root, apt-get).
    text = (ROOT / "docs" / GUIDE).read_text()
    with_code = [h for h in re.findall(r"^## (.+)$", text, re.M) if blocks(GUIDE, "sh", h)]
    assert with_code == [
        "Install", "Settings", "Secrets", "Start mirror-stack", "Register the registries",
        "Start the registries", "A policy", "Push and watch it mirrored", "Aliases",
        "Health, metrics and alerts", "Logs", "Backups", "Restore", "Key rotation", "Stop",
    ]
    (install,) = blocks(GUIDE, "sh", "Install")
    assert "docker-registry skopeo sqlite3 jq" in install

    (settings,) = blocks(GUIDE, "sh", "Settings")
    assert set(re.findall(r"\b([A-Z_]+)=", settings)) == SETTINGS
    guide.section("Settings")
    assert guide.env["MIRROR_ADDRESS"] == f"127.0.0.1:{grpc}"
    assert guide.env["PATH"].startswith(f"{ROOT}/.venv/bin:")

    guide.section("Secrets")
    token = (work / "admin.token").read_text().strip()
    assert guide.env["MIRROR_TOKEN"] == token and len(token) >= 32
    assert (work / "tokens").stat().st_mode & 0o077 == 0

    (started,) = guide.section("Start mirror-stack")
    assert "SERVING" in started
    assert (work / "data" / "secret.key").exists()

    (endpoints,) = guide.section("Register the registries")
    assert "endpoint dev added" in endpoints and "endpoint qa added" in endpoints
    dev_row = next(line for line in endpoints.splitlines() if line.strip().startswith("dev "))
    assert "stored" in dev_row  # the webhook secret, never shown

    guide.section("Start the registries")
    # The registry configs hold webhook secrets: private, as everything after `umask 077`.
    assert all((work / f).stat().st_mode & 0o077 == 0 for f in ("dev.yml", "qa.yml"))
    assert _manifest_digest(dev, "team/website", "1.0-stable") == ""

    save_and_apply, import_and_apply = blocks(GUIDE, "sh", "A policy")
    created = guide.run(save_and_apply, "A policy block 1")
    assert "policy promote-stable created" in created
    # Save & Apply evaluated the tag already there; fail closed without vulnerability data.
    blocked = next(line for line in created.splitlines() if "1.0-stable" in line)
    assert "blocked" in blocked and "no vulnerability data" in created
    assert _manifest_digest(qa, "qa/website", "1.0-stable") == ""
    applied = guide.run(import_and_apply, "A policy block 2")
    assert "imported 1, updated 0, skipped 0" in applied and "Alpine:v3.19" in applied
    assert "1 tags evaluated, 1 matched, 1 runs started" in applied
    wait_for("1.0-stable applied to qa", _mirrored(qa, "1.0-stable", image.digest))

    pushed, check = blocks(GUIDE, "sh", "Push and watch it mirrored")
    guide.run(pushed, "Push block 1")
    # The webhook, not a sweep: nothing else looks at dev until the next reconcile (300 s).
    wait_for("1.1-stable mirrored on push", _mirrored(qa, "1.1-stable", image.digest))
    shown = guide.run(check, "Push block 2")
    assert image.digest in shown and "succeeded" in shown

    alias_blocks = blocks(GUIDE, "sh", "Aliases")
    assert len(alias_blocks) == 3
    guide.run(alias_blocks[0], "Aliases block 1")
    wait_for("the localhost push to arrive unplaced",
             lambda: _healthz(http)["events"].get("unknown_source"))
    status = guide.run(alias_blocks[1], "Aliases block 2")
    assert f"mirrorctl endpoint update qa --alias localhost:{qa}" in status
    shown_qa = guide.run(alias_blocks[2], "Aliases block 3")
    assert f"localhost:{qa}" in shown_qa

    def unplaced() -> list[Any]:
        res = subprocess.run(["mirrorctl", "-o", "json", "status"], env=guide.env, cwd=work,
                             capture_output=True, text=True, timeout=60, check=True)
        return list(json.loads(res.stdout)["unplaced_events"])

    # The hint goes once the alias is added (the gateway's endpoint list is cached for a few
    # seconds), and a new push by that name is placed at qa (done, not unknown_source).
    wait_for("the hint to go once the alias is added", lambda: unplaced() == [])
    done = _healthz(http)["events"].get("done", 0)
    _skopeo_push(work, f"localhost:{qa}", "qa/hotfix:1.1")
    wait_for("the next localhost push to be placed",
             lambda: _healthz(http)["events"].get("done", 0) > done)
    assert _healthz(http)["events"]["unknown_source"] == 1 and unplaced() == []

    health, config = guide.section("Health, metrics and alerts")
    probe, _, rest = health.partition("\n")
    assert probe == "SERVING"
    healthz, end = json.JSONDecoder().raw_decode(rest)  # curl adds no newline after it
    assert healthz["status"] == "ok" and healthz["events"]["unknown_source"] == 1
    metrics = rest[end:]
    assert re.search(
        r'^mirror_policy_runs_total\{[^}]*policy="promote-stable"[^}]*state="succeeded"[^}]*\}'
        r" [1-9]", metrics, re.M), metrics
    assert "SUCCESS" in config
    # Every metric the guide names is served (a labelled family with no sample yet still has
    # its # TYPE line; counters are typed without the _total suffix).
    with urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics", timeout=10) as resp:
        served = resp.read().decode()
    named = set(re.findall(r"`(mirror_[a-z_]+)", text))
    assert len(named) >= 9
    assert [n for n in sorted(named) if n.removesuffix("_total") not in served] == []
    # The ignore block works on 2.8.2: pushes arrive, the many pulls (the mirror's reads of
    # dev, skopeo inspect on qa) are never sent.
    received = {action: float(n) for action, n in re.findall(
        r'^mirror_events_received(?:_total)?\{[^}]*action="(\w+)"[^}]*\} (\S+)', served, re.M)}
    assert received.get("push", 0) > 0 and received.get("pull", 0) == 0, received

    (logged,) = guide.section("Logs")
    docs = [json.loads(line) for line in logged.splitlines() if line.startswith("{")]
    run_lines = [d for d in docs if "run" in d]
    rpc_lines = [d for d in docs if "rpc_method" in d]
    assert len(run_lines) + len(rpc_lines) == len(docs) and len(rpc_lines) == 3, logged
    # The warnings of this session: the localhost push no endpoint placed, named as such.
    assert "came from an unknown registry (localhost:" in logged
    # Every field the guide names is on some line of this session's log.
    logs_prose = text[text.index("## Logs"):text.index("## Backups")].split("```")[0]
    fields = set(re.findall(r"`([a-z_]+)`", logs_prose))
    assert {"rpc_method", "code", "duration_ms", "event", "policy", "run", "transfer"} <= fields
    keys = {k for line in (work / "mirror-stack.log").read_text().splitlines()
            if line.startswith("{") for k in json.loads(line)}
    assert sorted(fields - keys) == []
    assert run_lines and all(r["policy"] == "promote-stable" and r["run"] for r in run_lines)
    assert any(r.get("transfer") for r in run_lines)
    assert rpc_lines and all(r["rpc_method"].startswith("/") and r["code"] for r in rpc_lines)
    # A number (jq prints 2.0 as 2).
    assert all(type(r["duration_ms"]) in (int, float) for r in rpc_lines)

    (backed_up,) = guide.section("Backups")
    files = {"gateway.db", "policy.sqlite3", "scanner.db", "transfer.db"}
    assert set(backed_up.split()) >= files and backed_up.count("ok") == len(files)
    assert {p.name for p in (work / "backup").iterdir()} == files
    assert (work / "secret.key.backup").read_bytes() == (work / "data/secret.key").read_bytes()

    # A push after the backup: the restored gateway.db has no run for it, reconcile finds it.
    _skopeo_push(work, f"127.0.0.1:{dev}", "team/website:1.1.1-stable")
    wait_for("1.1.1-stable mirrored before the restore",
             _mirrored(qa, "1.1.1-stable", image.digest))
    (restored,) = guide.section("Restore")
    assert "reconcile: 3 tags checked" in restored
    found = next(line for line in restored.splitlines() if "1.1.1-stable" in line)
    assert "skipped" in found and "up to date" in found
    assert "dev " in restored and "qa " in restored and "promote-stable" in restored
    assert "stored" in next(line for line in restored.splitlines() if line.strip().startswith(
        "dev "))
    # The restored stack still acts on pushes: the policy and the dev webhook secret
    # (decrypted with the restored key) survived.
    _skopeo_push(work, f"127.0.0.1:{dev}", "team/website:1.2-stable")
    wait_for("1.2-stable mirrored by the restored stack", _mirrored(qa, "1.2-stable", image.digest))

    old_key = (work / "secret.key.backup").read_bytes().strip()
    (rotated,) = guide.section("Key rotation")
    assert "transfer.db endpoints.webhook_secret_enc: 1 re-encrypted" in rotated
    new_key = (work / "data-restored/secret.key").read_bytes().strip()
    assert new_key != old_key and (work / "old.key").read_bytes().strip() == old_key
    assert not (work / "new.key").exists()
    with sqlite3.connect(work / "data-restored/transfer.db") as conn:
        (token,) = conn.execute(
            "SELECT webhook_secret_enc FROM endpoints WHERE name='dev'").fetchone()
    with pytest.raises(SecretKeyError):
        SecretBox([old_key]).decrypt(bytes(token))
    assert SecretBox([new_key]).decrypt(bytes(token)) == (work / "dev.webhook").read_text().strip()
    _skopeo_push(work, f"127.0.0.1:{dev}", "team/website:1.3-stable")
    wait_for("1.3-stable mirrored under the new key", _mirrored(qa, "1.3-stable", image.digest))

    guide.section("Stop")
    pids = [int((work / name).read_text()) for name in PID_FILES]
    wait_for("everything the guide started to exit", _exited(pids), timeout=30)

    # No token or webhook secret in any output or in the log.
    secrets = [(work / name).read_text().strip()
               for name in ("admin.token", "dev.webhook", "webhook.secret")]
    for text in [(work / "mirror-stack.log").read_text(), *guide.outputs]:
        assert not [s for s in secrets if s in text]


def _transfer_db(data: Path, box: SecretBox) -> None:
    """A transfer.db as the service writes it, with one endpoint holding both secrets."""
    from transfer_service.schema import open_database

    db = open_database(data)
    db.conn.execute(
        "INSERT INTO endpoints (name, url, username, secret_enc, create_time, update_time, "
        "webhook_secret_enc) VALUES ('qa', 'https://qa.example', 'ci', ?, 0, 0, ?)",
        (box.encrypt("qa-password"), box.encrypt("qa-webhook-secret-0123")),
    )
    db.conn.close()


def test_rotate_reencrypts_under_the_first_key(tmp_path: Path, capsys: Any) -> None:
    old, new = Fernet.generate_key(), Fernet.generate_key()
    _transfer_db(tmp_path, SecretBox([old]))
    env = {rotate.KEY_ENV: f"{new.decode()},{old.decode()}"}
    done = rotate.rotate(tmp_path, env)
    assert [(r.column, r.count) for r in done] == [("secret_enc", 1), ("webhook_secret_enc", 1)]
    with sqlite3.connect(tmp_path / "transfer.db") as conn:
        secret, webhook = conn.execute(
            "SELECT secret_enc, webhook_secret_enc FROM endpoints").fetchone()
    assert SecretBox([new]).decrypt(secret) == "qa-password"
    assert SecretBox([new]).decrypt(webhook) == "qa-webhook-secret-0123"
    with pytest.raises(SecretKeyError):
        SecretBox([old]).decrypt(secret)


def test_rotate_refuses_one_key_and_keeps_data_on_a_wrong_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    old = Fernet.generate_key()
    _transfer_db(tmp_path, SecretBox([old]))
    monkeypatch.setenv(rotate.KEY_ENV, Fernet.generate_key().decode())
    assert rotate.main(["--data", str(tmp_path)]) == 1
    assert "NEW,OLD" in capsys.readouterr().err
    # Neither key opens the stored secrets: nothing is rewritten, the error says why.
    wrong = f"{Fernet.generate_key().decode()},{Fernet.generate_key().decode()}"
    monkeypatch.setenv(rotate.KEY_ENV, wrong)
    assert rotate.main(["--data", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "cannot be decrypted" in err and old.decode() not in err
    with sqlite3.connect(tmp_path / "transfer.db") as conn:
        (secret,) = conn.execute("SELECT secret_enc FROM endpoints").fetchone()
    assert SecretBox([old]).decrypt(secret) == "qa-password"


def test_operating_guide_links_resolve() -> None:
    text = (ROOT / "docs" / GUIDE).read_text()
    slugs = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
             for h in re.findall(r"^## (.+)$", text, re.M)}
    anchors = re.findall(r"\]\(#([^)]+)\)", text)
    assert anchors and sorted(set(anchors) - slugs) == []
    files = re.findall(r"\]\(([^)#:]+)\)", text)
    assert files and [f for f in files if not (ROOT / "docs" / f).exists()] == []


def test_rotate_refuses_a_data_folder_in_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    old = Fernet.generate_key()
    _transfer_db(tmp_path, SecretBox([old]))
    monkeypatch.setenv(rotate.KEY_ENV, f"{Fernet.generate_key().decode()},{old.decode()}")
    held = datadir.claim(tmp_path, "mirror-stack")
    try:
        assert rotate.main(["--data", str(tmp_path)]) == 1
    finally:
        held.release()
    assert "is in use by mirror-stack" in capsys.readouterr().err
    with sqlite3.connect(tmp_path / "transfer.db") as conn:
        (secret,) = conn.execute("SELECT secret_enc FROM endpoints").fetchone()
    assert SecretBox([old]).decrypt(secret) == "qa-password"  # untouched
    assert rotate.main(["--data", str(tmp_path)]) == 0  # once it is free


def test_example_systemd_unit_runs_the_guides_command(tmp_path: Path) -> None:
    unit = (ROOT / "deploy/examples/mirror-stack.service").read_text()
    # ExecStart, continuation lines joined, parses with mirror-stack's own options.
    joined = re.sub(r"\\\n\s*", " ", unit)
    (exec_start,) = re.findall(r"^ExecStart=(.+)$", joined, re.M)
    argv = shlex.split(exec_start)
    assert argv[0] == "/opt/image-mirror/.venv/bin/mirror-stack"
    args = stack_main.parse_args(argv[1:])
    assert (args.data, args.log_format) == ("/var/lib/image-mirror/data", "json")
    assert args.tokens_file and args.webhook_secret_file
    assert "--data" in blocks(GUIDE, "sh", "Start mirror-stack")[0]
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # The checkout's path here instead of /opt/image-mirror, so ExecStart is executable.
    local = tmp_path / "mirror-stack.service"
    local.write_text(unit.replace("/opt/image-mirror", str(ROOT)))
    res = subprocess.run([analyze, "verify", str(local)], capture_output=True, text=True,
                         timeout=60)
    assert (res.returncode, res.stdout + res.stderr) == (0, "")
