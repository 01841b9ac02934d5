"""docs/events.md's verification examples (Python and openssl), run verbatim on a real
signed delivery, accept it and refuse a tampered body, a moved timestamp and a stale one."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.fernet import Fernet
from mirror.v1 import gateway_pb2

from gateway.notify import Notifier
from gateway.schema import open_database
from tests.clients.docs_blocks import blocks, run_bash
from tests.gateway.test_subscriptions import run
from transfer_service.secrets import SecretBox

SECTION = "Verifying a delivery"


async def _signed_delivery(tmp_path: Path) -> tuple[str, dict[str, str], bytes]:
    got: list[tuple[dict[str, str], bytes]] = []

    async def hook(request: web.Request) -> web.Response:
        got.append((dict(request.headers), await request.read()))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    server = TestServer(app)
    await server.start_server()
    db = open_database(tmp_path)
    n = Notifier(db=db, cipher=SecretBox([Fernet.generate_key()]))
    await n.start()
    try:
        sub = n.store.create(gateway_pb2.Subscription(url=str(server.make_url("/hook"))))
        await n.send(run())
        await asyncio.wait_for(n.drain(), 10)
    finally:
        await n.stop()
        await server.close()
        db.close()
    ((headers, body),) = got
    return sub.secret, headers, body


@pytest.fixture
def delivery(tmp_path: Path) -> tuple[str, dict[str, str], bytes]:
    return asyncio.run(_signed_delivery(tmp_path))


def _python_verify() -> Callable[..., bool]:
    (code,) = blocks("events.md", "python", SECTION)
    namespace: dict[str, Any] = {}
    exec(compile(code, "docs/events.md", "exec"), namespace)  # our own docs, verbatim
    return namespace["verify"]  # type: ignore[no-any-return]


def test_python_example(delivery: tuple[str, dict[str, str], bytes]) -> None:
    secret, headers, body = delivery
    verify = _python_verify()
    assert verify(secret, headers, body)
    assert not verify(secret, headers, body.replace(b'"SUCCEEDED"', b'"FAILED"'))
    moved = dict(headers, **{"X-Mirror-Timestamp": str(int(headers["X-Mirror-Timestamp"]) - 1)})
    assert not verify(secret, moved, body)
    assert not verify(secret, headers, body, now=time.time() + 301)
    assert not verify("not-the-secret-0123456789", headers, body)


@pytest.mark.parametrize(
    ("change", "ok"),
    [("none", True), ("body", False), ("timestamp", False), ("stale", False)],
)
def test_openssl_example(
    delivery: tuple[str, dict[str, str], bytes], tmp_path: Path, change: str, ok: bool
) -> None:
    (script,) = blocks("events.md", "bash", SECTION)
    secret, headers, body = delivery
    ts, sig = headers["X-Mirror-Timestamp"], headers["X-Mirror-Signature"]
    if change == "body":
        body = body.replace(b'"qa/website"', b'"qa/evil"')
    elif change == "timestamp":
        ts = str(int(ts) + 1)
    elif change == "stale":
        ts, sig = _resign(secret, str(int(time.time()) - 600), body)
    (tmp_path / "body.json").write_bytes(body)
    env = {"PATH": os.environ["PATH"], "SECRET": secret, "TIMESTAMP": ts, "SIGNATURE": sig}
    res = run_bash(script, env, tmp_path)
    assert (res.returncode == 0) is ok, res.stderr
    assert ("signature OK" in res.stdout) is ok


def _resign(secret: str, ts: str, body: bytes) -> tuple[str, str]:
    """A genuine signature made long ago (the replay the timestamp check refuses)."""
    return ts, "sha256=" + hmac.new(secret.encode(), ts.encode() + b"." + body,
                                    hashlib.sha256).hexdigest()
