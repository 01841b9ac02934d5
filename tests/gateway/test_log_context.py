"""Gateway log lines carry a context id: the event, the run or the webhook request they serve."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.http import WebhookApp
from gateway.inbox import Inbox
from gateway.runner import Push
from gateway.schema import open_database
from gateway.tasks import KeyedTasks
from gateway.worker import InboxWorker
from servicekit.logs import JsonFormatter, _ContextFilter, context_id
from tests.gateway.test_webhook_parse import body, push
from tests.gateway.test_worker import Directory, event, until

CT = {"Content-Type": "application/vnd.docker.distribution.events.v1+json"}
log = logging.getLogger("tests.gateway.log_context")


@pytest.fixture
def json_lines() -> Iterator[list[dict[str, str]]]:
    """Every log record as the JSON document the stack writes with --log-format json."""
    lines: list[dict[str, str]] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(json.loads(self.format(record)))

    handler = Collect()
    handler.addFilter(_ContextFilter())
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    yield lines
    root.removeHandler(handler)
    root.setLevel(old_level)


class LoggingRunner:
    """Logs one line per push, as the real runner does while it evaluates and starts runs."""

    async def act(self, push: Push, only_policy: str = "") -> list[object]:
        await asyncio.sleep(0.01)  # interleave the events' tasks
        log.info("acting on %s", push.event_id)
        return []


async def test_lines_logged_while_acting_on_an_event_carry_its_id(
    tmp_path: Path, json_lines: list[dict[str, str]]
) -> None:
    inbox = Inbox(open_database(tmp_path))
    w = InboxWorker(inbox, LoggingRunner(), Directory(), concurrency=4)  # type: ignore[arg-type]
    w.start()
    try:
        await inbox.add([event("ev-1", tag="1"), event("ev-2", tag="2"), event("ev-3", tag="3")])
        await until(lambda: inbox.depth() == 0)
        # Each event's line is written just after its row is marked done.
        await until(lambda: sum(d["logger"] == "gateway.worker" for d in json_lines) >= 3)
    finally:
        await w.stop()
    acting = {d["msg"]: d["ctx"] for d in json_lines if d["msg"].startswith("acting on")}
    assert acting == {"acting on ev-1": "ev-1", "acting on ev-2": "ev-2", "acting on ev-3": "ev-3"}
    done = [d for d in json_lines if d["logger"] == "gateway.worker"]
    assert done and all(d["ctx"] == d["msg"].split()[1] for d in done)
    assert context_id.get() == "-"  # the test's own context is untouched


async def test_keyed_tasks_log_under_their_key(json_lines: list[dict[str, str]]) -> None:
    tasks = KeyedTasks()

    async def work(n: int) -> None:
        await asyncio.sleep(0.01)
        log.info("follow-up %d", n)

    tasks.spawn("run-a", lambda: work(1))
    tasks.spawn("run-b", lambda: work(2))
    await until(lambda: len(tasks) == 0)
    got = {d["msg"]: d["ctx"] for d in json_lines if d["msg"].startswith("follow-up")}
    assert got == {"follow-up 1": "run-a", "follow-up 2": "run-b"}


async def test_webhook_lines_carry_the_request_id(
    tmp_path: Path, json_lines: list[dict[str, str]]
) -> None:
    client = TestClient(TestServer(WebhookApp(Inbox(open_database(tmp_path))).make_app()))
    await client.start_server()
    try:
        bad = push("bad")
        del bad["target"]["digest"]  # type: ignore[attr-defined]
        headers = {**CT, "X-Request-Id": "hook-7"}
        r = await client.post("/events", data=body(push("good"), bad), headers=headers)
        assert r.status == 200
    finally:
        await client.close()
    warned = [d for d in json_lines if d["logger"] == "gateway.http"]
    assert len(warned) == 1 and "malformed" in warned[0]["msg"]
    assert warned[0]["ctx"] == "hook-7"
