"""The console's pure parts: criteria rows -> rule, New mirror form -> Policy, sessions."""

from __future__ import annotations

import pytest
from mirror.v1 import policy_pb2
from multidict import MultiDict

from console.criteria import CriteriaError, Criterion, rule_of
from console.policyform import describe_trigger, parse_duration, policy_from_form
from console.sessions import Role, SessionStore
from console.throttle import SignInThrottle
from console.views.forms import FormError


def test_rows_write_rules_with_quoted_values() -> None:
    rows = [
        Criterion("tag", "endswith", "stable"),
        Criterion("component", "startswith", "b"),
        Criterion("critical_vulns", "eq", "3"),
        Criterion("license", "in", 'MIT, "odd"'),
    ]
    assert rule_of(rows) == (
        'tag endswith "stable" and component startswith "b" and critical_vulns == 3 and '
        'license in ["MIT", "\\"odd\\""]'
    )
    assert rule_of(rows[:2], "or") == 'tag endswith "stable" or component startswith "b"'
    assert rule_of([]) == "true"


@pytest.mark.parametrize("row, message", [
    (Criterion("critical_vulns", "le", "three"), "whole number"),
    (Criterion("license", "startswith", "MIT"), "no operator"),
    (Criterion("tag", "in", " , "), "one or more"),
    (Criterion("tag", "eq", ""), "enter a value"),
    (Criterion("nope", "eq", "x"), "unknown attribute"),
])
def test_rows_that_cannot_be_written_say_why(row: Criterion, message: str) -> None:
    with pytest.raises(CriteriaError, match=message):
        rule_of([Criterion("tag", "eq", "1"), row])


def test_durations() -> None:
    assert parse_duration("90", "i") == 90
    assert parse_duration("30m", "i") == 1800
    assert parse_duration("1h30m", "i") == 5400
    for bad in ("", "soon", "1d", "-5m"):
        with pytest.raises(FormError):
            parse_duration(bad, "poll_interval")


def _form(**kw: str) -> MultiDict[str]:
    base = {"endpoint": "dev", "repository": "dev/website", "registry": "qa",
            "remote_repository": "qa/website", "rule": 'tag endswith "stable"',
            "name": "m", "direction": "push", "tag_mode": "keep"}
    return MultiDict({**base, **kw})


def test_push_and_pull_mirrors_swap_source_and_target() -> None:
    push = policy_from_form(_form())
    assert (push.source.endpoint, push.source.repository) == ("dev", "dev/website")
    assert (push.target.endpoint, push.target.repository) == ("qa", "qa/website")
    assert push.tag_template == "%n" and push.overwrite == policy_pb2.OVERWRITE_ALWAYS
    assert not push.HasField("trigger") and describe_trigger(push) == "on push"
    assert not push.source_repository  # the deprecated field is never sent
    pull = policy_from_form(_form(direction="pull", registry="__new__", new_name="up",
                                  trigger="schedule", poll_interval="15m",
                                  tag_mode="template", tag_template="%Y-%n",
                                  overwrite="never", platforms="linux/amd64, linux/arm64",
                                  keep_newest="5", deletions="propagate"))
    signed = _form()
    signed.add("copy_referrers", "signatures")
    signed.add("copy_referrers", "sboms")
    signed.add("copy_referrers", "evil")
    assert list(policy_from_form(signed).copy_referrers) == ["signatures", "sboms"]
    assert (pull.source.endpoint, pull.source.repository) == ("up", "qa/website")
    assert (pull.target.endpoint, pull.target.repository) == ("dev", "dev/website")
    assert pull.trigger.schedule.interval.seconds == 900
    assert describe_trigger(pull) == "polls every 15m"
    assert pull.tag_template == "%Y-%n" and pull.overwrite == policy_pb2.OVERWRITE_NEVER
    assert list(pull.platforms) == ["linux/amd64", "linux/arm64"] and pull.keep_newest == 5
    assert pull.deletions == policy_pb2.DELETION_MODE_PROPAGATE
    cron = policy_from_form(_form(trigger="schedule", poll_cron="*/5 * * * *"))
    assert cron.trigger.schedule.cron == "*/5 * * * *"
    manual = policy_from_form(_form(trigger="manual"))
    assert manual.trigger.HasField("manual") and describe_trigger(manual) == "only when applied"
    with pytest.raises(FormError):
        policy_from_form(_form(keep_newest="many"))
    with pytest.raises(FormError, match="remote registry"):
        policy_from_form(_form(registry="__new__", new_name=""))


class _Client:
    closed = 0

    async def close(self) -> None:
        _Client.closed += 1


async def test_sessions_expire_when_idle_or_too_old_and_are_bounded() -> None:
    now = [0.0]
    store = SessionStore(idle_s=10, max_age_s=25, max_sessions=2, clock=lambda: now[0])
    s = await store.create(Role.ADMIN, _Client())  # type: ignore[arg-type]
    for t in (8.0, 16.0, 24.0):  # each request restarts the idle clock ...
        now[0] = t
        assert await store.get(s.id) is s
    now[0] = 26.0  # ... but not the maximum age
    assert await store.get(s.id) is None
    idle = await store.create(Role.READ, _Client())  # type: ignore[arg-type]
    now[0] = 37.0
    assert await store.get(idle.id) is None
    a = await store.create(Role.READ, _Client())  # type: ignore[arg-type]
    b = await store.create(Role.READ, _Client())  # type: ignore[arg-type]
    c = await store.create(Role.READ, _Client())  # type: ignore[arg-type]
    assert len(store) == 2 and await store.get(a.id) is None and await store.get(c.id) is c
    assert b.csrf != c.csrf and b.csrf_ok(b.csrf) and not b.csrf_ok(c.csrf)
    assert not b.csrf_ok("") and not b.csrf_ok(None)
    assert _Client.closed == 3


def test_sign_in_throttle_counts_failures_in_a_window_per_client() -> None:
    now = [0.0]
    t = SignInThrottle(limit=2, window_s=60, max_clients=2, clock=lambda: now[0])
    t.failed("a")
    assert t.retry_after("a") == 0
    now[0] = 10.0
    t.failed("a")
    assert t.retry_after("a") == 50.0 and t.retry_after("b") == 0
    now[0] = 61.0  # the first failure left the window
    assert t.retry_after("a") == 0
    t.failed("a")
    assert t.retry_after("a") > 0
    t.succeeded("a")
    assert t.retry_after("a") == 0
    for client in ("b", "c", "d"):
        t.failed(client)
    assert len(t._failures) == 2  # bounded: the oldest client is forgotten
