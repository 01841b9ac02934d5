"""Outbound `--notify-url` notifications through the stack: one per finished mirror run."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from google.protobuf import field_mask_pb2
from mirror.v1 import gateway_pb2, transfer_pb2

from registry_testkit.images import ImageBuilder, push
from registry_testkit.ports import free_port
from stack.process import StackProcess
from tests.e2e.conftest import WEBHOOK_SECRET, Clients, notify_config, wait_for
from tests.support.registry import HTPASSWD_USERS, RegistryFactory

pytestmark = pytest.mark.registry

Run = gateway_pb2.Run


class Receiver:
    """An aiohttp server on its own loop in a thread; keeps every POSTed JSON document."""

    def __init__(self) -> None:
        self.port = free_port()
        self.events: list[dict[str, Any]] = []
        self.content_types: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._loop.run_until_complete,
                                        args=(self._serve(),), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _hook(self, request: web.Request) -> web.Response:
        self.content_types.append(request.content_type)
        self.events.append(await request.json())
        return web.Response(status=204)

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def start(self) -> Receiver:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("notification receiver did not start")
        return self

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


def test_success_and_failure_are_posted_to_the_notify_url(
    receiver: Receiver, registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    stack = StackProcess(
        tmp_path / "data", webhook_secret=WEBHOOK_SECRET,
        extra_args=["--reconcile-interval", "0", "--notify-url", receiver.url],
    )
    stack.start()
    c = Clients(stack.grpc_address)
    try:
        dev = registry_factory(notifications=[notify_config(stack)])
        qa = registry_factory()
        locked = registry_factory(tls=True, htpasswd_users=dict(HTPASSWD_USERS))
        c.add_endpoint("dev", dev)
        c.add_endpoint("qa", qa)
        c.add_endpoint("locked", locked, "alice", HTPASSWD_USERS["alice"])
        ok = c.add_policy("ok", "dev/website", 'tag endswith "stable"', "qa", "qa/website")
        bad = c.add_policy("bad", "dev/website", 'tag endswith "stable"', "locked", "qa/website")
        # The password changes after the policy was accepted: its transfer fails at once (401).
        c.transfer.UpdateEndpoint(
            transfer_pb2.UpdateEndpointRequest(
                endpoint=transfer_pb2.Endpoint(name="locked", secret="not-alice-password"),
                update_mask=field_mask_pb2.FieldMask(paths=["secret"]),
            ),
            timeout=30,
        )
        # A run that does not match is not a mirror: it sends nothing.
        c.add_policy("never", "dev/website", 'tag == "other"', "qa", "qa/never")
        img = ImageBuilder(tmp_path / "img").image("8.0-stable")
        push(img, dev, "dev/website")

        (ok_run,) = c.wait_runs_final(ok.id, 1)
        (bad_run,) = c.wait_runs_final(bad.id, 1)
        assert ok_run.state == Run.STATE_SUCCEEDED and bad_run.state == Run.STATE_FAILED
        wait_for(lambda: len(receiver.events) >= 2, 30, "two notifications")
        events = {e["policy"]["name"]: e for e in receiver.events}
        assert len(receiver.events) == 2 and set(events) == {"ok", "bad"}
        assert set(receiver.content_types) == {"application/json"}

        good = events["ok"]
        assert good["type"] == "PUSH_MIRRORING" and good["state"] == "SUCCEEDED"
        assert good["policy"]["id"] == ok.id and good["run_id"] == ok_run.id
        assert good["source"] == {"endpoint": "dev", "repository": "dev/website",
                                  "tag": "8.0-stable"}
        assert good["destination"] == {"endpoint": "qa", "repository": "qa/website",
                                       "tag": "8.0-stable"}
        assert good["digest"] == img.digest and good["transfer_id"] == ok_run.transfer_id
        assert good["time"].endswith("Z")

        failed = events["bad"]
        assert failed["state"] == "FAILED" and failed["run_id"] == bad_run.id
        assert failed["destination"]["endpoint"] == "locked"
        assert failed["message"] == bad_run.message and failed["message"]
        # Credentials never leave the process, not even in a failure's message.
        assert "not-alice-password" not in str(receiver.events)
    finally:
        c.close()
        stack.stop()
