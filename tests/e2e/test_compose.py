"""docker-compose.yml, the Dockerfile and deploy/ are correct by construction (Docker cannot
run here): the YAML parses, every module/flag/port it names exists, every service keeps its
state in PostgreSQL with the password out of its command line, two transfer workers and two
gateways run behind the router, the registry configs are accepted by a real docker-registry
and notify the gateways (through the router) the way the tests' registries do."""

from __future__ import annotations

import os
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
from registry_testkit.postgres import available as postgres_available
from tests.e2e.conftest import notify_config

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
PY_SERVICES = {n: s for n, s in SERVICES.items() if s.get("command", [None])[0] == "python"}
# The services that serve gRPC (the console serves pages and dials them).
GRPC_SERVICES = {n: s for n, s in PY_SERVICES.items() if "--grpc-listen" in s["command"]}
SECRET = (ROOT / "deploy/webhook-secret").read_text().strip()
# The services that keep state, each in its own schema of the one PostgreSQL database.
STATEFUL = ("policy", "transfer", "scanner", "gateway")


def _flag(cmd: list[str], name: str) -> str | None:
    return cmd[cmd.index(name) + 1] if name in cmd else None


def _listen(name: str) -> int:
    return int(_flag(SERVICES[name]["command"], "--grpc-listen").rsplit(":", 1)[1])  # type: ignore[union-attr]


def _http_port(name: str) -> int:
    return int(_flag(SERVICES[name]["command"], "--http-listen").rsplit(":", 1)[1])  # type: ignore[union-attr]


def test_every_service_is_there() -> None:
    assert set(PY_SERVICES) == {"policy", "transfer", "scanner", "gateway", "router", "console"}
    assert SERVICES["registry-dev"]["image"] == SERVICES["registry-qa"]["image"] == "registry:2"
    # PostgreSQL 15, as the tests run it.
    assert SERVICES["postgres"]["image"] == "postgres:15"


def test_two_transfer_workers_and_two_gateways() -> None:
    replicas = {n: s.get("deploy", {}).get("replicas", 1) for n, s in PY_SERVICES.items()}
    assert replicas == {"transfer": 2, "gateway": 2, "policy": 1, "scanner": 1, "router": 1,
                        "console": 1}
    for name in ("transfer", "gateway"):
        svc = SERVICES[name]
        # Replicas cannot share a host port or a data folder (one writer per --data).
        assert "ports" not in svc and "container_name" not in svc, name
        assert not [v for v in svc.get("volumes", []) if v.endswith(":/data")], name


def test_every_service_keeps_its_state_in_postgresql_with_the_password_off_argv() -> None:
    pg = SERVICES["postgres"]
    user, db = pg["environment"]["POSTGRES_USER"], pg["environment"]["POSTGRES_DB"]
    assert "pg_isready" in pg["healthcheck"]["test"]
    assert "postgres-data:/var/lib/postgresql/data" in pg["volumes"]
    for name in STATEFUL:
        svc = SERVICES[name]
        env = svc["environment"]
        url = env["MIRROR_DATABASE"]
        # The URL names the server and the database; the password is libpq's PGPASSWORD, the
        # same expression the server is given (never in the URL, never on the command line).
        assert url == f"postgresql://{user}@postgres:5432/{db}", name
        assert env["PGPASSWORD"] == pg["environment"]["POSTGRES_PASSWORD"], name
        assert env["PGPASSWORD"].startswith("${MIRROR_DB_PASSWORD"), name
        text = " ".join(svc["command"])
        assert "--database" not in text and "postgresql://" not in text and \
            "PASSWORD" not in text, name
        assert svc["depends_on"]["postgres"] == {"condition": "service_healthy"}, name
    # The stateless ones hold no database at all.
    for name in ("router", "console"):
        assert "environment" not in SERVICES[name], name


def _local_command(name: str, ports: dict[str, int], tmp: Path) -> list[str]:
    """compose's command for `name` on this machine: the same flags, with each compose host
    a loopback port and each container path a folder under `tmp`."""
    cmd = list(SERVICES[name]["command"])
    for i, arg in enumerate(cmd):
        if arg == "--grpc-listen":
            cmd[i + 1] = f"127.0.0.1:{ports[name]}"
        elif arg == "--http-listen":
            cmd[i + 1] = f"127.0.0.1:{free_port()}"
        elif i > 0 and cmd[i - 1].endswith("-address"):
            cmd[i] = f"127.0.0.1:{ports[arg.split(':')[0]]}"
        elif arg.startswith("/") and i > 0 and cmd[i - 1].startswith("--"):
            # /data, /key/secret.key, /key/subscriptions.key, /run/secrets/webhook_secret
            local = tmp / name / arg.strip("/").replace("/", "_")
            if cmd[i - 1].endswith("-file") and "key" not in cmd[i - 1]:
                local.parent.mkdir(parents=True, exist_ok=True)
                local.write_text(SECRET)
            cmd[i] = str(local)
    return cmd


def _serving(address: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    from servicekit.healthcheck import check

    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if check(address, timeout=1) == "SERVING":
                return
        except Exception:  # grpc.RpcError while it starts
            pass
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.1)


@pytest.mark.skipif(not postgres_available(), reason="needs PostgreSQL")
def test_compose_services_start_on_postgresql_from_their_environment(
    pg_url: str, tmp_path: Path
) -> None:
    """Each stateful service, with compose's own command and environment (the server's
    address swapped for the test's PostgreSQL), keeps its state in its own schema there."""
    import psycopg

    ports = {n: free_port() for n in STATEFUL}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for name in ("transfer", "policy", "scanner", "gateway"):  # compose's order
            env = {k: v for k, v in os.environ.items() if k != "MIRROR_SECRET_KEY"}
            # compose's variables, the test server's URL (test_every_service_keeps_its_state_
            # in_postgresql... checks compose's own).
            env.update(SERVICES[name]["environment"])
            env["MIRROR_DATABASE"] = pg_url
            cmd = _local_command(name, ports, tmp_path)
            log = tmp_path / f"{name}.log"
            with open(log, "wb") as out:
                procs.append(subprocess.Popen([sys.executable, *cmd[1:]], cwd=ROOT, env=env,
                                              stdout=out, stderr=subprocess.STDOUT))
            _serving(f"127.0.0.1:{ports[name]}", procs[-1], log)
            # The database's address is in the environment, not on the command line.
            argv = Path(f"/proc/{procs[-1].pid}/cmdline").read_bytes()
            assert b"postgresql" not in argv, argv
        with psycopg.connect(pg_url) as conn:
            schemas = {r[0] for r in conn.execute(
                "SELECT schema_name FROM information_schema.schemata")}
        assert set(STATEFUL) <= schemas
        # Nothing of theirs went to SQLite files under their data folders.
        assert not [f for f in tmp_path.rglob("*.db")], list(tmp_path.rglob("*.db"))
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_addresses_point_at_the_right_services_and_ports() -> None:
    listen = {n: _listen(n) for n in GRPC_SERVICES}
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
    # One published gRPC address, the router's (on the host's loopback), and its webhook port.
    published = {n: s["ports"] for n, s in SERVICES.items() if "ports" in s}
    assert published == {
        "router": [f"127.0.0.1:{listen['router']}:{listen['router']}",
                   f"127.0.0.1:{_http_port('router')}:{_http_port('router')}"],
        "console": published["console"],
        "registry-dev": ["127.0.0.1:5000:5000"],
        "registry-qa": ["127.0.0.1:5001:5000"],
    }
    for name in GRPC_SERVICES:
        # Health from the service's own gRPC port.
        assert SERVICES[name]["healthcheck"]["test"] == [
            "CMD", "python", "-m", "servicekit.healthcheck", f"127.0.0.1:{listen[name]}"], name


def test_router_forwards_to_each_service_and_the_console_dials_it() -> None:
    listen = {n: _listen(n) for n in GRPC_SERVICES}
    router = SERVICES["router"]["command"]
    # A service name resolves to each of its replicas on the compose network.
    for name in STATEFUL:
        assert _flag(router, f"--{name}") == f"{name}:{listen[name]}"
    # The one webhook address: the router hands each notification to a gateway replica.
    assert _flag(router, "--gateway-http") == f"http://gateway:{_http_port('gateway')}"
    cmd = SERVICES["console"]["command"]
    assert _flag(cmd, "--address") == f"router:{listen['router']}"
    assert "--service-address" not in cmd
    port = int(_flag(cmd, "--listen").rsplit(":", 1)[1])  # type: ignore[union-attr]
    assert f"127.0.0.1:{port}:{port}" in SERVICES["console"]["ports"]
    # Where it tells registries to send notifications: the router's webhook port.
    assert _flag(cmd, "--events-url") == f"http://router:{_http_port('router')}"


def test_volumes_and_files_exist() -> None:
    for svc in SERVICES.values():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("./"):
                assert (ROOT / src).is_file(), src
            else:
                assert src in COMPOSE["volumes"]
    assert (ROOT / COMPOSE["secrets"]["webhook_secret"]["file"]).is_file()
    # Each service owns its data: only the transfer workers mount the key of the endpoints'
    # credentials (one key for all of them, on their own volume); the gateway and the scanner
    # read registries through its API. Only PostgreSQL mounts the database's volume.
    mounted = {n: [v.split(":")[0] for v in s.get("volumes", [])] for n, s in SERVICES.items()}
    assert [n for n, vols in mounted.items() if "transfer-key" in vols] == ["transfer"]
    assert [n for n, vols in mounted.items() if "postgres-data" in vols] == ["postgres"]
    key_dir = next(v.split(":")[1] for v in SERVICES["transfer"]["volumes"]
                   if v.startswith("transfer-key:"))
    assert _flag(SERVICES["transfer"]["command"], "--key-file") == f"{key_dir}/secret.key"
    # The gateways' replicas share one key of their subscriptions' secrets, of their own.
    assert [n for n, vols in mounted.items() if "gateway-key" in vols] == ["gateway"]
    gw_dir = next(v.split(":")[1] for v in SERVICES["gateway"]["volumes"]
                  if v.startswith("gateway-key:"))
    assert _flag(SERVICES["gateway"]["command"], "--subscription-key-file") == \
        f"{gw_dir}/subscriptions.key"
    for name, svc in SERVICES.items():
        assert "MIRROR_SECRET_KEY" not in yaml.safe_dump(svc), name
    for name in ("gateway", "scanner"):
        cmd = SERVICES[name]["command"]
        assert "--transfer-data" not in cmd and "--secret-key-file" not in cmd
        assert _flag(cmd, "--transfer-address") == "transfer:50052"


def test_dockerfile_gives_the_key_volume_to_the_service_user() -> None:
    """A new named volume takes its mount point's owner from the image: /key must exist there,
    owned by the user the services run as, or the first worker cannot write the key."""
    text = (ROOT / "Dockerfile").read_text()
    key_dir = next(v.split(":")[1] for v in SERVICES["transfer"]["volumes"]
                   if v.startswith("transfer-key:"))
    assert key_dir == next(v.split(":")[1] for v in SERVICES["gateway"]["volumes"]
                           if v.startswith("gateway-key:"))
    run = next(b for b in text.split("\nRUN ") if "useradd" in b)
    assert f"mkdir -p /data {key_dir}" in run and f"chown mirror /data {key_dir}" in run
    assert re.search(r"^USER mirror$", text, re.M)


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
    # The router's webhook port, in front of both gateways.
    assert ep["url"] == f"http://router:{_http_port('router')}/events"
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
