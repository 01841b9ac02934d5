"""docker-compose.yml, the Dockerfile and deploy/ are correct by construction (Docker cannot
run here): the YAML parses, every module/flag/port it names exists, the registry configs are
accepted by a real docker-registry and notify the gateway the way the tests' registries do."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import yaml

from registry_testkit.ports import free_port
from tests.e2e.conftest import notify_config

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
PY_SERVICES = {n: s for n, s in SERVICES.items() if s.get("command", [None])[0] == "python"}
# The services that serve gRPC (the console serves pages and dials them).
GRPC_SERVICES = {n: s for n, s in PY_SERVICES.items() if "--grpc-listen" in s["command"]}
SECRET = (ROOT / "deploy/webhook-secret").read_text().strip()


def _flag(cmd: list[str], name: str) -> str | None:
    return cmd[cmd.index(name) + 1] if name in cmd else None


def test_every_service_is_there() -> None:
    assert set(PY_SERVICES) == {"policy", "transfer", "scanner", "gateway", "router", "console"}
    assert SERVICES["registry-dev"]["image"] == SERVICES["registry-qa"]["image"] == "registry:2"


@pytest.mark.parametrize("name", ["policy", "transfer", "scanner", "gateway", "router",
                                  "console"])
def test_command_module_and_flags_exist(name: str) -> None:
    cmd = PY_SERVICES[name]["command"]
    assert cmd[1] == "-m"
    module = cmd[2]
    path = ROOT / module.replace(".", "/")
    assert (path / "__main__.py").exists() or path.with_suffix(".py").exists()
    res = subprocess.run(
        [sys.executable, "-m", module, "--help"], capture_output=True, text=True, cwd=ROOT,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    for flag in (a for a in cmd[3:] if a.startswith("--")):
        assert flag in res.stdout, f"{module} has no {flag}"


def test_addresses_point_at_the_right_services_and_ports() -> None:
    listen = {n: int(_flag(s["command"], "--grpc-listen").rsplit(":", 1)[1])  # type: ignore[union-attr]
              for n, s in GRPC_SERVICES.items()}
    wanted = {"--policy-address": "policy", "--transfer-address": "transfer",
              "--scanner-address": "scanner"}
    seen = 0
    for svc in PY_SERVICES.values():
        for flag, target in wanted.items():
            addr = _flag(svc["command"], flag)
            if addr is None:
                continue
            host, port = addr.rsplit(":", 1)
            assert (host, int(port)) == (target, listen[target]), f"{flag} {addr}"
            seen += 1
    # policy->transfer, transfer->policy, scanner->transfer, gateway->policy/transfer/scanner
    assert seen == 6
    for name, svc in GRPC_SERVICES.items():
        published = [p.split(":") for p in svc["ports"]]
        assert ["127.0.0.1", str(listen[name]), str(listen[name])] in published


def test_router_forwards_to_each_service_and_the_console_dials_it() -> None:
    listen = {n: int(_flag(s["command"], "--grpc-listen").rsplit(":", 1)[1])  # type: ignore[union-attr]
              for n, s in GRPC_SERVICES.items()}
    router = SERVICES["router"]["command"]
    for name in ("policy", "transfer", "scanner", "gateway"):
        assert _flag(router, f"--{name}") == f"{name}:{listen[name]}"
    cmd = SERVICES["console"]["command"]
    assert _flag(cmd, "--address") == f"router:{listen['router']}"
    assert "--service-address" not in cmd
    port = int(_flag(cmd, "--listen").rsplit(":", 1)[1])  # type: ignore[union-attr]
    assert f"127.0.0.1:{port}:{port}" in SERVICES["console"]["ports"]
    # Where it tells registries to send notifications: the gateway's HTTP port.
    gateway_http = int(_flag(SERVICES["gateway"]["command"], "--http-listen").rsplit(":", 1)[1])  # type: ignore[union-attr]
    assert _flag(cmd, "--events-url") == f"http://gateway:{gateway_http}"


def test_volumes_and_files_exist() -> None:
    for svc in SERVICES.values():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("./"):
                assert (ROOT / src).is_file(), src
            else:
                assert src in COMPOSE["volumes"]
    assert (ROOT / COMPOSE["secrets"]["webhook_secret"]["file"]).is_file()
    # Each service owns its data: only the transfer service mounts its volume (its database
    # and the key of the endpoints' credentials); the gateway and the scanner read registries
    # through its API.
    mounted = {n: [v.split(":")[0] for v in s.get("volumes", [])] for n, s in SERVICES.items()}
    assert [n for n, vols in mounted.items() if "transfer-data" in vols] == ["transfer"]
    for name in ("gateway", "scanner"):
        cmd = SERVICES[name]["command"]
        assert "--transfer-data" not in cmd and "--secret-key-file" not in cmd
        assert _flag(cmd, "--transfer-address") == "transfer:50052"


def test_dockerfile_copies_every_package() -> None:
    text = (ROOT / "Dockerfile").read_text()
    copied = set(re.findall(r"^COPY (\S+) ", text, re.M))
    for pkg in ("clients", "servicekit", "registry_client", "policy_service",
                "transfer_service", "scanner", "gateway", "stack"):
        assert pkg in copied and (ROOT / pkg).is_dir()
    for src in copied:
        for part in src.split():
            assert (ROOT / part).exists(), part


class _Stack:
    webhook_url = "http://gateway/events"


def _notification_shape(ep: dict[str, Any]) -> tuple[str, ...]:
    return tuple(sorted(ep))


@pytest.mark.parametrize("name", ["registry-dev", "registry-qa"])
def test_registry_config_notifies_the_gateway_like_the_tests(name: str) -> None:
    conf_path = next(v.split(":")[0] for v in SERVICES[name]["volumes"] if v.endswith(
        "/etc/docker/registry/config.yml:ro"))
    conf = yaml.safe_load((ROOT / conf_path).read_text())
    (ep,) = conf["notifications"]["endpoints"]
    # The same keys as the notifications the end-to-end tests' registries use.
    assert _notification_shape(ep) == _notification_shape(notify_config(_Stack()))  # type: ignore[arg-type]
    gw = SERVICES["gateway"]["command"]
    http_port = _flag(gw, "--http-listen").rsplit(":", 1)[1]  # type: ignore[union-attr]
    assert ep["url"] == f"http://gateway:{http_port}/events"
    assert ep["headers"]["Authorization"] == [f"Bearer {SECRET}"]
    assert conf["http"]["addr"].endswith(":5000")


@pytest.mark.skipif(shutil.which("docker-registry") is None, reason="needs docker-registry")
@pytest.mark.parametrize("name", ["registry-dev", "registry-qa"])
def test_real_registry_accepts_the_config(name: str, tmp_path: Path) -> None:
    conf_path = ROOT / f"deploy/{name}.yml"
    conf = yaml.safe_load(conf_path.read_text())
    port = free_port()
    # Only container paths and the address change; everything else is served as written.
    conf["http"]["addr"] = f"127.0.0.1:{port}"
    conf["storage"]["filesystem"]["rootdirectory"] = str(tmp_path / "storage")
    if "auth" in conf:
        shutil.copy(ROOT / "deploy/qa.htpasswd", tmp_path / "htpasswd")
        conf["auth"]["htpasswd"]["path"] = str(tmp_path / "htpasswd")
    cfg = tmp_path / "config.yml"
    cfg.write_text(yaml.safe_dump(conf))
    proc = subprocess.Popen(["docker-registry", "serve", str(cfg)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        status = None
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1) as r:
                    status = r.status
                break
            except urllib.error.HTTPError as e:
                status = e.code
                break
            except OSError:
                if proc.poll() is not None:
                    break
                time.sleep(0.1)
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert status == (401 if "auth" in conf else 200)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_qa_htpasswd_holds_the_documented_service_account() -> None:
    user, hashed = (ROOT / "deploy/qa.htpasswd").read_text().strip().split(":", 1)
    assert user == "mirror-bot"
    assert bcrypt.checkpw(b"mirror-bot-compose-password", hashed.encode())
    assert "mirror-bot-compose-password" in (ROOT / "docker-compose.yml").read_text()
