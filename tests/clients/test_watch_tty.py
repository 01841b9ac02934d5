"""`mirrorctl transfer watch` on a terminal: the rich progress bar as a user's screen shows it.

The copy is slowed by a fault proxy (each source blob read waits) so the bar is drawn while
bytes move; the pty's screen is rebuilt from the escape sequences mirrorctl writes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from registry_testkit.faultproxy import FaultProxy
from registry_testkit.images import ImageBuilder, digest_of, push
from registry_testkit.registry import RegistryProcess
from tests.clients.livestack import ADMIN_TOKEN, MIRRORCTL, LiveStack, running, start_stack
from tests.clients.terminal import run_on_pty

pytestmark = pytest.mark.registry

RATE = r"[\d.]+ [kMG]?B/s"
SIZE = r"[\d.]+/[\d.]+ KiB"
BAR = "[━╸╺]{40}"  # rich's bar: full, half and start-of-remainder cells


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveStack]:
    yield from running(start_stack(tmp_path))


def test_watch_draws_bytes_blobs_rate_and_time_left(
    live: LiveStack, registry_factory: Callable[..., RegistryProcess],
    fault_proxy: Callable[[str], FaultProxy], images: ImageBuilder,
) -> None:
    ls = live
    dev, qa = registry_factory(), registry_factory()
    image = images.image("1.0", layers=[150_000] * 4)
    push(image, dev, "team/app")
    slow = fault_proxy(dev.url)
    slow.delay(r"/blobs/sha256:", 0.8, method="GET")
    # One request at a time: blobs finish one after another, so the rate can be measured.
    assert ls.ctl("endpoint", "add", "slow", "--url", slow.url, "--max-concurrency", "1").code == 0
    assert ls.ctl("endpoint", "add", "qa", "--url", qa.url).code == 0
    started = ls.ctl("transfer", "start", "slow/team/app:1.0", "--to", "qa/team/app", "-o", "json")
    assert started.code == 0, started.stderr
    tid = started.json()["id"]

    env = {k: v for k, v in os.environ.items() if not k.startswith("MIRROR_")}
    env.update(MIRROR_ADDRESS=ls.address, MIRROR_TOKEN=ADMIN_TOKEN, TERM="xterm-256color",
               COLUMNS="120")
    run = run_on_pty([MIRRORCTL, "transfer", "watch", tid], env)
    assert run.code == 0, run.final

    # While copying: state, bar, bytes, blobs, a measured rate and a time left.
    moving = re.compile(rf"^running\s+{BAR} {SIZE} blobs [1-4]/5 {RATE} \d+:\d\d:\d\d$", re.M)
    assert any(moving.search(f) for f in run.frames), "\n----\n".join(run.frames[-8:])
    rows = run.final.splitlines()
    total = f"{image.total_blob_bytes / 1024:.1f}"
    finished = rf"done\s+{BAR} {total}/{total} KiB blobs 5/5 {RATE} 0:00:00"
    assert re.fullmatch(finished, rows[-2]), rows
    assert rows[-1].startswith(f"{tid} done ") and rows[-1].endswith(image.digest)
    assert "blobs 5/5" in rows[-1]
    assert digest_of(qa, "team/app", "1.0") == image.digest
