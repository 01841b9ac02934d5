"""deploy/kubernetes: every resource validates against the Kubernetes API schemas
(kubernetes-validate, offline: it ships them), and the manifests say what the split deployment
needs: every service's state in PostgreSQL (the URL from the Secret, in the environment), two
transfer workers and two gateways that roll one pod at a time, readiness from the gRPC health
service on the port each serves, non-root pods, the Fernet key given to the transfer workers
alone, the router as the client address, spreading its calls over the replicas."""

from __future__ import annotations

import copy
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "deploy/kubernetes"
# A recent release (native gRPC probes are GA since 1.27); the package's newest as well.
VERSIONS = ("1.34.0", kubernetes_validate.latest_version())
STATEFUL = {"policy": 50051, "transfer": 50052, "scanner": 50054, "gateway": 50055}
PORTS = {**STATEFUL, "router": 50050}
# The services built to run side by side on one database (issue 11), and their replicas.
REPLICAS = {"transfer": 2, "gateway": 2, "policy": 1, "scanner": 1, "router": 2}


def _resources() -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        out += [(path, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return out


RESOURCES = _resources()


def _by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for _, d in RESOURCES if d["kind"] == kind}


def _component(doc: dict[str, Any]) -> str:
    return str(doc["metadata"]["labels"]["app.kubernetes.io/component"])


def _container(dep: dict[str, Any]) -> dict[str, Any]:
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    return c  # type: ignore[no-any-return]


def _flag(cmd: list[str], name: str) -> str | None:
    return cmd[cmd.index(name) + 1] if name in cmd else None


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No network: a validation that tried to fetch a schema would fail."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network access during validation")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("version", VERSIONS)
def test_every_resource_validates_offline(version: str, offline: None) -> None:
    kinds = sorted({d["kind"] for _, d in RESOURCES})
    assert kinds == ["Deployment", "PodDisruptionBudget", "Secret", "Service"]
    for path, doc in RESOURCES:
        # strict: an unknown or misspelt field is an error, not ignored.
        kubernetes_validate.validate(doc, version, strict=True)
        assert doc["metadata"]["name"], path


def test_a_broken_manifest_is_refused(offline: None) -> None:
    dep = copy.deepcopy(_by_kind("Deployment")["image-mirror-transfer"])
    _container(dep)["readinessProbe"]["grpc"]["port"] = "grpc"  # grpc probes need a number
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, VERSIONS[0], strict=True)
    dep = copy.deepcopy(_by_kind("Deployment")["image-mirror-transfer"])
    _container(dep)["livenessProbe"]["grcp"] = {"port": 50052}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, VERSIONS[0], strict=True)


def test_deployments_probe_grpc_health_and_run_as_non_root() -> None:
    deps = {_component(d): d for d in _by_kind("Deployment").values()}
    assert set(deps) == set(PORTS)
    for name, dep in deps.items():
        spec = dep["spec"]
        assert spec["replicas"] == REPLICAS[name], name
        if name in ("transfer", "gateway"):
            # Replicas on PostgreSQL: a roll starts a new pod before an old one stops.
            assert spec["strategy"] == {
                "type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}
            }, name
        elif name in STATEFUL:
            # One at a time: the old pod is gone before the new one starts.
            assert spec["strategy"] == {"type": "Recreate"}, name
        pod = spec["template"]["spec"]
        assert spec["selector"]["matchLabels"] == spec["template"]["metadata"]["labels"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        c = _container(dep)
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
        listen = _flag(c["command"], "--grpc-listen")
        assert listen == f"0.0.0.0:{PORTS[name]}", name
        assert {"name": "grpc", "containerPort": PORTS[name]} in c["ports"]
        for probe in ("readinessProbe", "livenessProbe"):
            assert c[probe]["grpc"] == {"port": PORTS[name]}, (name, probe)


def test_every_service_keeps_its_state_in_postgresql_from_the_secret() -> None:
    deps = {_component(d): d for d in _by_kind("Deployment").values()}
    (secret,) = _by_kind("Secret").values()
    assert secret["stringData"]["database-url"].startswith("postgresql://")
    for name, dep in deps.items():
        c = _container(dep)
        env = {e["name"]: e for e in c.get("env", [])}
        if name in STATEFUL:
            assert env["MIRROR_DATABASE"]["valueFrom"] == {
                "secretKeyRef": {"name": secret["metadata"]["name"], "key": "database-url"}
            }, name
        else:
            assert "MIRROR_DATABASE" not in env, name
        # The URL (and its password) never on a command line.
        assert "--database" not in c["command"], name
        assert not any("postgresql" in a for a in c["command"]), name
        # No volume outlives a pod: the data folder holds only the lock and the spool.
        pod = dep["spec"]["template"]["spec"]
        data = [v for v in pod["volumes"] if v["name"] == "data"]
        assert all("emptyDir" in v for v in data), name
        assert not [v for v in pod["volumes"] if "persistentVolumeClaim" in v], name


def test_replicated_services_keep_one_pod_through_a_drain() -> None:
    budgets = {b["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"]: b
               for b in _by_kind("PodDisruptionBudget").values()}
    deps = {_component(d): d for d in _by_kind("Deployment").values()}
    assert set(budgets) == {"transfer", "gateway"}
    for name, pdb in budgets.items():
        labels = deps[name]["spec"]["template"]["metadata"]["labels"]
        assert pdb["spec"]["selector"]["matchLabels"] == labels
        assert 1 <= pdb["spec"]["minAvailable"] < deps[name]["spec"]["replicas"]


def test_only_the_transfer_service_holds_the_key() -> None:
    deps = {_component(d): d for d in _by_kind("Deployment").values()}
    (secret,) = _by_kind("Secret").values()
    assert {"secret-key", "tokens", "webhook-secret", "database-url", "subscription-key"} <= \
        set(secret["stringData"])
    for name, dep in deps.items():
        pod = dep["spec"]["template"]["spec"]
        text = yaml.safe_dump(pod)
        assert ("secret-key" in text) == (name == "transfer"), name
        # The gateways' replicas share a key of their own (their subscriptions' secrets).
        assert ("subscription-key" in text) == (name == "gateway"), name
        env = {e["name"]: e for e in _container(dep).get("env", [])}
        if name in ("transfer", "gateway"):
            key = "secret-key" if name == "transfer" else "subscription-key"
            assert env["MIRROR_SECRET_KEY"]["valueFrom"]["secretKeyRef"]["key"] == key, name
        cmd = _container(dep)["command"]
        assert "--transfer-data" not in cmd and "--secret-key-file" not in cmd
    for name in ("gateway", "scanner"):
        assert _flag(_container(deps[name])["command"], "--transfer-address") == "transfer:50052"


def test_the_secrets_placeholders_cannot_be_started_with() -> None:
    """An operator who forgets to fill the Secret in gets a refusal, never a guessable token
    or key."""
    from cryptography.fernet import Fernet

    from servicekit.auth import TokenFileError, parse_tokens

    (secret,) = _by_kind("Secret").values()
    data = secret["stringData"]
    with pytest.raises(TokenFileError, match="shorter than 16"):
        parse_tokens(data["tokens"])
    for key in ("secret-key", "subscription-key"):
        with pytest.raises(ValueError):
            Fernet(data[key])


def test_services_and_addresses_agree() -> None:
    services = _by_kind("Service")
    deps = {_component(d): d for d in _by_kind("Deployment").values()}
    # One Service per component, plus a headless one per replicated service.
    assert set(services) == {*PORTS, "transfer-pods", "gateway-pods"}
    component = {n: _component(s) for n, s in services.items()}
    for name, svc in services.items():
        dep = deps[component[name]]
        assert svc["spec"]["selector"] == dep["spec"]["template"]["metadata"]["labels"]
        grpc_port = next(p for p in svc["spec"]["ports"] if p["name"] == "grpc")
        assert grpc_port["port"] == PORTS[component[name]]
        assert (svc["spec"].get("clusterIP") == "None") == name.endswith("-pods"), name
    # Every HOST:PORT a pod dials is a Service at its port.
    for dep in deps.values():
        cmd = _container(dep)["command"]
        for i, arg in enumerate(cmd[:-1]):
            if arg.startswith("--") and arg != "--grpc-listen" and ":" in cmd[i + 1] and \
                    not cmd[i + 1].startswith(("/", "0.0.0.0")):
                host, port = cmd[i + 1].rsplit(":", 1)
                assert host in services and int(port) == PORTS[component[host]], \
                    (arg, cmd[i + 1])
    # The router dials each replica of the replicated services (one DNS record per ready pod)
    # and the one Service of the others.
    router = _container(deps["router"])["command"]
    assert {f: _flag(router, f"--{f}") for f in STATEFUL} == {
        f: f"{f}-pods:{p}" if REPLICAS[f] > 1 else f"{f}:{p}" for f, p in STATEFUL.items()}


@pytest.mark.parametrize("name", sorted(PORTS))
def test_commands_name_real_modules_and_flags(name: str) -> None:
    dep = next(d for d in _by_kind("Deployment").values() if _component(d) == name)
    cmd = _container(dep)["command"]
    assert cmd[:2] == ["python", "-m"]
    res = subprocess.run([sys.executable, "-m", cmd[2], "--help"], capture_output=True,
                         text=True, cwd=ROOT, timeout=60)
    assert res.returncode == 0, res.stderr
    for flag in (a for a in cmd[3:] if a.startswith("--")):
        assert flag in res.stdout, f"{cmd[2]} has no {flag}"
