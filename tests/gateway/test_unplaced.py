"""Events from registries no endpoint names: grouped per (hosts, repository) in the inbox, with
the alias that would place them when an endpoint is the same registry under another local
name."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from mirror.v1 import gateway_pb2, transfer_pb2

from gateway import inbox as inbox_mod
from gateway.endpoints import is_local_name, suggest_alias, unplaced_with_suggestions
from gateway.inbox import Inbox, InboxEvent
from gateway.schema import open_database


def ep(name: str, url: str, aliases: tuple[str, ...] = ()) -> transfer_pb2.Endpoint:
    return transfer_pb2.Endpoint(name=name, url=url, aliases=list(aliases))


ENDPOINTS = [ep("dev", "http://127.0.0.1:5000"), ep("qa", "https://qa.example.com")]


@pytest.mark.parametrize(
    ("hosts", "expected"),
    [
        (["localhost:5000"], ("dev", "localhost:5000")),
        (["[::1]:5000"], ("dev", "[::1]:5000")),
        (["127.0.0.2:5000"], ("dev", "127.0.0.2:5000")),
        ([f"{socket.gethostname()}:5000"], ("dev", f"{socket.gethostname()}:5000")),
        (["localhost:5001"], None),  # another port: another registry
        (["registry.example.com:5000"], None),  # not a local name: no guess
        (["qa.example.org:443"], None),
    ],
)
def test_suggestion(hosts: list[str], expected: tuple[str, str] | None) -> None:
    assert suggest_alias(hosts, ENDPOINTS) == expected


def test_local_names() -> None:
    assert is_local_name("localhost") and is_local_name("[::1]") and is_local_name("127.8.0.1")
    assert is_local_name("app.localhost")
    assert not is_local_name("10.0.0.1") and not is_local_name("example.com")


def _event(i: int, hosts: tuple[str, ...], repo: str, tag: str, at: float) -> InboxEvent:
    return InboxEvent(
        id=f"e{i}", trigger=1, repository=repo, tag=tag, digest="", received_at=at, hosts=hosts
    )


def test_inbox_groups_unplaced_events_newest_first(tmp_path: Path, db_target: str) -> None:
    inbox = Inbox(open_database(tmp_path, db_target))
    local = ("localhost:5000",)
    other = ("registry.example.com:5000",)
    evs = [
        _event(1, local, "team/a", "1.0", 10.0),
        _event(2, local, "team/a", "1.2", 30.0),
        _event(3, local, "team/a", "1.1", 20.0),
        _event(4, other, "team/a", "9", 15.0),
        _event(5, local, "team/b", "x", 5.0),
        _event(6, ("127.0.0.1:5000",), "team/a", "placed", 40.0),
    ]
    inbox.add_many(evs)
    for e in evs[:5]:
        inbox.finish(e.id, inbox_mod.UNKNOWN_SOURCE, "unknown registry")
    inbox.finish("e6", inbox_mod.DONE)
    groups = inbox.unplaced()
    got = [(list(g.hosts), g.repository, g.tag, g.count) for g in groups]
    assert got == [
        (["localhost:5000"], "team/a", "1.2", 3),
        (["registry.example.com:5000"], "team/a", "9", 1),
        (["localhost:5000"], "team/b", "x", 1),
    ]
    assert groups[0].last_time.seconds == 30

    out = unplaced_with_suggestions(groups, ENDPOINTS, limit=2)
    assert [(g.suggested_endpoint, g.suggested_alias) for g in out] == [
        ("dev", "localhost:5000"),
        ("", ""),
    ]
    # Once the alias exists the groups it places are no longer listed.
    with_alias = [ep("dev", "http://127.0.0.1:5000", ("localhost:5000",))]
    out = unplaced_with_suggestions(inbox.unplaced(), with_alias, limit=10)
    assert [g.hosts[0] for g in out] == ["registry.example.com:5000"]
    assert isinstance(out[0], gateway_pb2.UnplacedEvent)
