"""How a page says when the last poll was: its end, or since when it runs (a poll under way
has no end time yet, and pages showed a blank time for it)."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp
from mirror.v1 import gateway_pb2

from console.app import _poll_when


def test_a_finished_poll_shows_its_end_and_one_under_way_its_start() -> None:
    start, end = Timestamp(seconds=1_796_000_000), Timestamp(seconds=1_796_000_042)
    done = gateway_pb2.Poll(id="p1", start_time=start, end_time=end)
    assert _poll_when(done) == "2026-11-30 00:54:02 UTC"
    running = gateway_pb2.Poll(id="p2", start_time=start)
    assert _poll_when(running) == "running since 2026-11-30 00:53:20 UTC"
