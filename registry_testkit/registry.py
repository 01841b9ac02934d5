"""Start real `docker-registry serve CONFIG.yml` processes on free loopback ports.

Variants: anonymous HTTP, htpasswd users (bcrypt) optionally over TLS with a trustme CA,
token auth against `TokenServer`, and push notifications to given endpoints.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import trustme
import yaml

from registry_testkit.ports import free_port
from registry_testkit.token_server import TokenServer

REGISTRY_BIN = "docker-registry"


@dataclass
class RegistryOptions:
    """What to configure. `htpasswd_users` (name -> password) turns on Basic auth."""

    tls: bool = False
    htpasswd_users: dict[str, str] = field(default_factory=dict)
    token_server: TokenServer | None = None
    # Each: {"name":..., "url":..., "headers": {"Authorization": ["Bearer x"]}}
    notifications: list[dict[str, Any]] = field(default_factory=list)
    log_level: str = "warn"


@dataclass
class RegistryProcess:
    """A running registry; `url` is what clients use, `host` what skopeo uses."""

    workdir: Path
    port: int
    options: RegistryOptions
    storage: Path
    proc: subprocess.Popen[bytes] | None = None
    ca: trustme.CA | None = None
    ca_pem: str = ""
    cert_dir: Path | None = None  # for skopeo --*-cert-dir (holds ca.crt)

    @property
    def scheme(self) -> str:
        return "https" if self.options.tls else "http"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    def skopeo_flags(
        self, side: str, user: str | None = None, password: str | None = None
    ) -> list[str]:
        """skopeo options for this registry as `side` ("src" or "dest")."""
        flags: list[str] = []
        if self.options.tls and self.cert_dir is not None:
            flags.append(f"--{side}-cert-dir={self.cert_dir}")
        else:
            flags.append(f"--{side}-tls-verify=false")
        if user is not None:
            if password is None:
                password = self.password_of(user)
            flags.append(f"--{side}-creds={user}:{password}")
        return flags

    def password_of(self, user: str) -> str:
        if user in self.options.htpasswd_users:
            return self.options.htpasswd_users[user]
        ts = self.options.token_server
        if ts is not None and user in ts.users:
            return ts.users[user].password
        raise KeyError(user)

    def client_config(self, user: str | None = None, **kw: Any) -> Any:
        """A `registry_client.RegistryConfig` for this registry (as `user`, CA trusted)."""
        from registry_client import RegistryConfig

        if user:
            kw = {"username": user, "password": self.password_of(user), **kw}
        return RegistryConfig(url=self.url, ca_pem=self.ca_pem, **kw)

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.options.tls:
            return None
        return ssl.create_default_context(cadata=self.ca_pem)

    def blob_exists(self, repo: str, digest: str) -> bool:
        """Whether the registry's storage holds the blob *linked into* `repo` (no HTTP)."""
        algo, _, hexd = digest.partition(":")
        link = (
            self.storage
            / "docker/registry/v2/repositories"
            / repo
            / "_layers"
            / algo
            / hexd
            / "link"
        )
        return link.exists()

    def blob_data_exists(self, digest: str) -> bool:
        algo, _, hexd = digest.partition(":")
        return (
            self.storage / "docker/registry/v2/blobs" / algo / hexd[:2] / hexd / "data"
        ).exists()

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.proc = None


def _write_config(reg: RegistryProcess) -> Path:
    opts = reg.options
    http: dict[str, Any] = {
        "addr": f"127.0.0.1:{reg.port}",
        # Signed upload state: uploads survive a restart and cannot be forged.
        "secret": secrets.token_hex(16),
        "headers": {"X-Content-Type-Options": ["nosniff"]},
    }
    conf: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": opts.log_level, "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": str(reg.storage)},
            "delete": {"enabled": True},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": http,
    }
    if opts.tls:
        reg.ca = trustme.CA()
        leaf = reg.ca.issue_cert("127.0.0.1", "localhost")
        cert = reg.workdir / "server.crt"
        key = reg.workdir / "server.key"
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        leaf.private_key_pem.write_to_path(str(key))
        http["tls"] = {"certificate": str(cert), "key": str(key)}
        reg.ca_pem = reg.ca.cert_pem.bytes().decode()
        reg.cert_dir = reg.workdir / "certs.d"
        reg.cert_dir.mkdir()
        (reg.cert_dir / "ca.crt").write_text(reg.ca_pem)
    if opts.htpasswd_users:
        lines = [
            f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=5)).decode()}"
            for u, p in opts.htpasswd_users.items()
        ]
        htpasswd = reg.workdir / "htpasswd"
        htpasswd.write_text("\n".join(lines) + "\n")
        conf["auth"] = {"htpasswd": {"realm": "test-registry", "path": str(htpasswd)}}
    elif opts.token_server is not None:
        ts = opts.token_server
        conf["auth"] = {
            "token": {
                "realm": ts.realm,
                "service": ts.service,
                "issuer": ts.issuer,
                "rootcertbundle": str(ts.rootcertbundle),
            }
        }
    if opts.notifications:
        endpoints = []
        for ep in opts.notifications:
            one = {"timeout": "2s", "threshold": 5, "backoff": "1s", "headers": {}}
            one.update(ep)
            endpoints.append(one)
        conf["notifications"] = {"endpoints": endpoints}
    path = reg.workdir / "config.yml"
    path.write_text(yaml.safe_dump(conf))
    return path


def _wait_ready(reg: RegistryProcess, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    ctx = reg.ssl_context()
    last: Exception | None = None
    while time.monotonic() < deadline:
        if reg.proc is not None and reg.proc.poll() is not None:
            log = (reg.workdir / "registry.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"docker-registry exited with {reg.proc.returncode}: {log}")
        try:
            with urllib.request.urlopen(f"{reg.url}/v2/", timeout=1, context=ctx):
                return
        except urllib.error.HTTPError as e:
            if e.code == 401:  # auth is on: it answers, so it is up
                return
            last = e
        except (urllib.error.URLError, OSError) as e:
            last = e
        time.sleep(0.05)
    raise RuntimeError(f"registry on {reg.url} not ready after {timeout}s: {last}")


def launch(options: RegistryOptions | None = None, workdir: Path | None = None) -> RegistryProcess:
    """Start a registry; the caller must call `.stop()` (prefer `start_registry`)."""
    options = options or RegistryOptions()
    workdir = Path(workdir or tempfile.mkdtemp(prefix="registry-"))
    workdir.mkdir(parents=True, exist_ok=True)
    storage = workdir / "storage"
    storage.mkdir(exist_ok=True)
    reg = RegistryProcess(workdir=workdir, port=free_port(), options=options, storage=storage)
    config = _write_config(reg)
    log = open(workdir / "registry.log", "ab")  # noqa: SIM115 - handed to the child process
    try:
        reg.proc = subprocess.Popen(
            [REGISTRY_BIN, "serve", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "OTEL_TRACES_EXPORTER": "none"},
        )
    finally:
        log.close()
    try:
        _wait_ready(reg)
    except BaseException:
        reg.stop()
        raise
    return reg


@contextlib.contextmanager
def start_registry(
    options: RegistryOptions | None = None, workdir: Path | None = None
) -> Iterator[RegistryProcess]:
    """Context manager: a running registry, stopped and removed afterwards."""
    own_dir = workdir is None
    reg = launch(options, workdir)
    try:
        yield reg
    finally:
        reg.stop()
        if own_dir:
            shutil.rmtree(reg.workdir, ignore_errors=True)
