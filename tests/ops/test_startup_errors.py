"""Operator experience (issue 15): --version everywhere; startup errors are one line, not a
traceback, with a non-zero exit."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ["stack", "policy_service", "transfer_service", "scanner", "gateway", "stack.router",
            "console"]


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, timeout=60, cwd=cwd
    )


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        yield int(s.getsockname()[1])


@pytest.mark.parametrize("module", [*SERVICES, "mirror.cli.main"])
def test_version(module: str) -> None:
    res = run(module, "--version")
    assert res.returncode == 0, res.stderr
    assert "image-mirror" in res.stdout or "mirrorctl" in res.stdout
    assert res.stdout.strip().split()[-1][0].isdigit()


@pytest.mark.parametrize("module", SERVICES)
def test_bad_log_level_is_a_usage_error(module: str) -> None:
    res = run(module, "--log-level", "loud")
    assert res.returncode == 2
    assert "'loud' is not a log level" in res.stderr
    assert "Traceback" not in res.stderr


def test_busy_grpc_port_is_one_line(busy_port: int, tmp_path: Path) -> None:
    res = run(
        "stack", "--data", str(tmp_path), "--grpc-listen", f"127.0.0.1:{busy_port}",
        "--http-listen", "127.0.0.1:0",
    )
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith(f"mirror-stack: cannot listen on 127.0.0.1:{busy_port}")
    assert "--grpc-listen" in last


def test_busy_http_port_is_one_line(busy_port: int, tmp_path: Path) -> None:
    res = run(
        "stack", "--data", str(tmp_path), "--grpc-listen", "127.0.0.1:0",
        "--http-listen", f"127.0.0.1:{busy_port}",
    )
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("mirror-stack: cannot listen:") and str(busy_port) in last


@pytest.mark.parametrize("content", [b"not a fernet key\n", None])
def test_unusable_key_file_is_one_line(tmp_path: Path, content: bytes | None) -> None:
    key = tmp_path / "secret.key"
    if content is None:
        key.mkdir()  # a folder where the key file should be: cannot be read
    else:
        key.write_bytes(content)
    res = run(
        "transfer_service", "--data", str(tmp_path), "--grpc-listen", "127.0.0.1:0",
        "--key-file", str(key),
    )
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("transfer_service: ")
    assert str(key) in last, last  # it names the file at fault


def test_missing_tokens_file_is_one_line(tmp_path: Path) -> None:
    res = run(
        "stack", "--data", str(tmp_path), "--grpc-listen", "127.0.0.1:0",
        "--http-listen", "127.0.0.1:0", "--tokens-file", str(tmp_path / "tokens"),
    )
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    assert "tokens" in res.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(("module", "prog"), [("stack", "mirror-stack"),
                                              ("policy_service", "policy_service")])
@pytest.mark.parametrize("content", ["", "# admin:TOKEN lines go here\n\n   \n"])
def test_tokens_file_without_tokens_is_one_line(
    tmp_path: Path, module: str, prog: str, content: str
) -> None:
    # An unfilled secret (an empty mount, a template) must not serve an open API on 0.0.0.0.
    tokens = tmp_path / "tokens"
    tokens.write_text(content)
    args = [module, "--data", str(tmp_path / "data"), "--grpc-listen", "0.0.0.0:0",
            "--tokens-file", str(tokens)]
    if module == "stack":
        args += ["--http-listen", "127.0.0.1:0"]
    res = run(*args)
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert lines[-1].startswith(f"{prog}: {tokens} holds no tokens: write one 'admin:TOKEN' "
                                "line"), lines
    assert "listening" not in res.stderr and "is running" not in res.stdout


def test_console_startup_errors_are_one_line(busy_port: int) -> None:
    # The console runs on its own too (compose, Kubernetes): the same rules as the services.
    for args, expected in (
        (["--listen", f"127.0.0.1:{busy_port}"],
         f"mirror-console: cannot listen on 127.0.0.1:{busy_port}: address in use"),
        (["--ca", "/nonexistent/ca.pem"],
         "mirror-console: cannot read the TLS files given by --ca/--cert/--key:"),
    ):
        res = run("console", *args)
        assert res.returncode == 1, res.stderr
        assert "Traceback" not in res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(expected), lines
