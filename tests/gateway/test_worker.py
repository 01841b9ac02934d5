"""The inbox worker: ordering per tag, retries, unknown sources (runner and directory doubles)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mirror.v1 import gateway_pb2

from gateway import inbox as inbox_mod
from gateway.inbox import Inbox, InboxEvent
from gateway.runner import Push, TransientError
from gateway.schema import open_database
from gateway.worker import InboxWorker


class Directory:
    async def resolve(self, hosts: tuple[str, ...]) -> str | None:
        return "dev" if "dev:5000" in hosts else None


class Runner:
    def __init__(self) -> None:
        self.calls: list[Push] = []
        self.gates: dict[str, asyncio.Event] = {}
        self.fail_first: set[str] = set()

    async def act(self, push: Push, only_policy: str = "") -> list[Any]:
        self.calls.append(push)
        if push.event_id in self.fail_first:
            self.fail_first.discard(push.event_id)
            raise TransientError("policy service unavailable")
        gate = self.gates.get(push.event_id)
        if gate is not None:
            await gate.wait()
        return []


def event(eid: str, tag: str = "1-stable", host: str = "dev:5000") -> InboxEvent:
    return InboxEvent(
        id=eid,
        trigger=gateway_pb2.Run.TRIGGER_EVENT,
        repository="dev/website",
        tag=tag,
        digest="sha256:" + "d" * 64,
        received_at=time.time(),
        hosts=(host,),
    )


async def until(cond: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


@pytest.fixture
def inbox(tmp_path: Path, db_target: str) -> Iterator[Inbox]:
    """On both engines: SQLite under tmp_path, and a fresh PostgreSQL database."""
    db = open_database(tmp_path, db_target)
    yield Inbox(db)
    db.close()


async def test_pushes_of_one_tag_are_acted_on_in_order(inbox: Inbox) -> None:
    runner = Runner()
    runner.gates["a"] = asyncio.Event()
    w = InboxWorker(inbox, runner, Directory(), concurrency=4)  # type: ignore[arg-type]
    w.start()
    try:
        await inbox.add([event("a"), event("b"), event("other", tag="2-stable")])
        await until(lambda: {p.event_id for p in runner.calls} == {"a", "other"})
        await asyncio.sleep(0.1)
        assert "b" not in {p.event_id for p in runner.calls}  # waits for "a"
        runner.gates["a"].set()
        await until(lambda: inbox.depth() == 0)
        assert [p.event_id for p in runner.calls if p.tag == "1-stable"] == ["a", "b"]
        assert inbox.get("b").state == inbox_mod.DONE  # type: ignore[union-attr]
    finally:
        await w.stop()


async def test_transient_failure_is_retried(inbox: Inbox) -> None:
    runner = Runner()
    runner.fail_first.add("a")
    w = InboxWorker(inbox, runner, Directory(), base_delay_s=0.05)  # type: ignore[arg-type]
    w.start()
    try:
        await inbox.add([event("a")])
        await until(lambda: inbox.depth() == 0)
        ev = inbox.get("a")
        assert ev is not None and ev.state == inbox_mod.DONE and ev.attempts == 1
        assert [p.event_id for p in runner.calls] == ["a", "a"]
    finally:
        await w.stop()


async def test_unknown_registry_is_recorded_not_acted_on(inbox: Inbox) -> None:
    runner = Runner()
    w = InboxWorker(inbox, runner, Directory())  # type: ignore[arg-type]
    w.start()
    try:
        await inbox.add([event("x", host="stranger:5000")])
        await until(lambda: inbox.depth() == 0)
        ev = inbox.get("x")
        assert ev is not None and ev.state == inbox_mod.UNKNOWN_SOURCE
        assert "stranger:5000" in ev.message and runner.calls == []
    finally:
        await w.stop()


async def test_hold_keeps_events_pending(inbox: Inbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIRROR_GATEWAY_HOLD_INBOX", "1")
    runner = Runner()
    w = InboxWorker(inbox, runner, Directory())  # type: ignore[arg-type]
    w.start()
    await inbox.add([event("a")])
    await asyncio.sleep(0.2)
    assert runner.calls == [] and inbox.depth() == 1
    await w.stop()
