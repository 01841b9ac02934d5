"""mirror-stack's transfer flags reach the transfer service: --max-jobs-per-endpoint holds a
second job from a stalled source back although --max-jobs has room (the default share of 4
jobs would run it), and --reschedule-base/--reschedule-max set when a job against an
unreachable registry is tried again (the default waits a minute)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from registry_testkit.faultproxy import FaultProxy
from registry_testkit.images import ImageBuilder, push
from registry_testkit.ports import free_port
from registry_testkit.registry import RegistryProcess
from tests.clients.livestack import LiveStack, running, start_stack, wait_for

pytestmark = pytest.mark.registry


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveStack]:
    yield from running(start_stack(tmp_path, [
        "--max-jobs", "4", "--max-jobs-per-endpoint", "1",
        "--reschedule-base", "1", "--reschedule-max", "2",
    ]))


def _ok(ls: LiveStack, *args: str) -> str:
    r = ls.ctl(*args)
    assert r.code == 0, f"{args}: {r.code}\n{r.stdout}\n{r.stderr}"
    return r.stdout


def _show(ls: LiveStack, transfer_id: str) -> dict:  # type: ignore[type-arg]
    return ls.ctl("transfer", "show", transfer_id, "-o", "json").json()  # type: ignore[no-any-return]


def _start(ls: LiveStack, src: str, dst: str) -> str:
    out = _ok(ls, "transfer", "start", src, "--to", dst, "-o", "json")
    return str(json.loads(out)["id"])


def test_transfer_flags_reach_the_transfer_service(
    live: LiveStack, registry_factory: Callable[..., RegistryProcess],
    fault_proxy: Callable[[str], FaultProxy], images: ImageBuilder,
) -> None:
    ls = live
    dev, qa = registry_factory(), registry_factory()
    push(images.image("1", layers=[20_000]), dev, "team/a")
    push(images.image("2", layers=[21_000]), dev, "team/b")
    slow = fault_proxy(dev.url)
    slow.delay(r"/blobs/sha256:", 15.0, method="GET")  # every source blob read stalls
    _ok(ls, "endpoint", "add", "slow", "--url", slow.url)
    _ok(ls, "endpoint", "add", "qa", "--url", qa.url)
    first = _start(ls, "slow/team/a:1", "qa/team/a")
    wait_for("the first transfer running", lambda: _show(ls, first)["state"] == "running")
    second = _start(ls, "slow/team/b:2", "qa/team/b")
    held = wait_for("the second held back", lambda: (
        lambda t: t if "job slot of source endpoint slow (1 running at most)" in t["message"]
        else None)(_show(ls, second)))
    assert held["state"] == "waiting"
    assert _show(ls, first)["state"] == "running"
    ls.ctl("transfer", "cancel", first)
    ls.ctl("transfer", "cancel", second)

    # A registry that refuses connections: after the quick attempts the job is rescheduled
    # within --reschedule-base (1 s), not the default minute.
    _ok(ls, "endpoint", "add", "gone", "--url", f"http://127.0.0.1:{free_port()}")
    dead = _start(ls, "gone/team/a:1", "qa/team/dead")
    job = wait_for("the job rescheduled", lambda: (
        lambda t: t if t["next_attempt_time"] else None)(_show(ls, dead)), timeout=90)
    seen = dt.datetime.now(dt.UTC)
    due = dt.datetime.fromisoformat(job["next_attempt_time"].replace("Z", "+00:00"))
    assert (due - seen).total_seconds() <= 2.5, job
    assert "next attempt at" in job["message"]
    ls.ctl("transfer", "cancel", dead)
