"""The trigger and copy settings of a policy in the forms people write them (issues 12, 13).

One reading shared by the SDK's keywords and mirrorctl's flags and YAML files:

    trigger="push" | "manual"                                 # or a PolicyTrigger message
    trigger={"schedule": {"interval": "30s", "jitter": "5s"}}
    trigger={"schedule": {"cron": "*/5 * * * *"}}
    signature_wait="10m"          # durations: "1h30m", "45s", "500ms", seconds, a timedelta

and their short text for tables (`every 30s, jitter 5s`, `cron */5 * * * *`).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping
from typing import Any

from google.protobuf import duration_pb2

from mirror.v1 import policy_pb2

DurationArg = str | int | float | dt.timedelta | duration_pb2.Duration
TriggerArg = str | Mapping[str, Any] | policy_pb2.PolicyTrigger | policy_pb2.ScheduleTrigger
# Policy.copy_referrers values (the contract of issue 13).
REFERRER_KINDS = ("signatures", "attestations", "sboms", "all")
TRIGGER_KINDS = ("push", "schedule", "manual")

_UNIT_US = {"h": 3_600_000_000, "m": 60_000_000, "s": 1_000_000, "ms": 1_000, "us": 1}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)")
_DURATION_HINT = "a duration such as 30s, 10m, 1h30m or 500ms"


def duration(value: DurationArg) -> duration_pb2.Duration:
    """A Duration from `30s`, `10m`, `1h30m`, `500ms` (Go's spelling; protobuf's `1.5s` too),
    a number of seconds, a timedelta or a Duration. ValueError otherwise."""
    if isinstance(value, duration_pb2.Duration):
        return value
    out = duration_pb2.Duration()
    if isinstance(value, dt.timedelta):
        out.FromTimedelta(value)
        return out
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not {_DURATION_HINT}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"{value!r}: a duration must not be negative")
        out.FromMicroseconds(round(value * 1_000_000))
        return out
    text = str(value).strip()
    pos, total = 0, 0.0
    for m in _PART.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_US[m.group(2)]
        pos = m.end()
    if not text or pos != len(text):
        raise ValueError(f"{value!r} is not {_DURATION_HINT}")
    out.FromMicroseconds(round(total))
    return out


def duration_text(d: duration_pb2.Duration | None) -> str:
    """`1h30m`, `10m`, `30s`, `1.5s`, `500ms`, `0s`: what `duration` reads back."""
    if d is None:
        return "0s"
    us = d.seconds * 1_000_000 + d.nanos // 1000
    if us == 0:
        return "0s"
    if us % 1_000_000:
        if us < 1_000_000 and us % 1000 == 0:
            return f"{us // 1000}ms"
        return f"{us / 1_000_000:g}s"
    seconds = us // 1_000_000
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return "".join(f"{n}{u}" for n, u in ((h, "h"), (m, "m"), (s, "s")) if n) or "0s"


def schedule(
    *, interval: DurationArg | None = None, cron: str = "", jitter: DurationArg | None = None
) -> policy_pb2.PolicyTrigger:
    """A schedule trigger: every `interval`, or on the `cron` expression (exactly one), each
    poll delayed by a random part of `jitter`."""
    if (interval is None) == (not cron):
        raise ValueError("a schedule takes exactly one of interval (e.g. 30s) and cron "
                         "(e.g. '*/5 * * * *')")
    s = policy_pb2.ScheduleTrigger(cron=cron)
    if interval is not None:
        s.interval.CopyFrom(duration(interval))
    if jitter is not None:
        s.jitter.CopyFrom(duration(jitter))
    return policy_pb2.PolicyTrigger(schedule=s)


_FORMS = ("push, manual, {schedule: {interval: 30s, jitter: 5s}} or "
          "{schedule: {cron: '*/5 * * * *'}}")


def trigger(value: TriggerArg) -> policy_pb2.PolicyTrigger:
    """A PolicyTrigger from "push", "manual", {"schedule": {...}}, {"push": {}},
    {"manual": None} (YAML `{manual: }`), a ScheduleTrigger or a PolicyTrigger. ValueError
    naming the forms.

    Beside another key, an alternative whose value is null is ignored, so the trigger
    `-o json` prints (`{"push": null, "schedule": null, "manual": {}}`) reads back as itself;
    so are null schedule settings (`{"interval": "30s", "cron": "", "jitter": null}`). All
    alternatives null is no trigger chosen: the default, push."""
    if isinstance(value, policy_pb2.PolicyTrigger):
        return value
    if isinstance(value, policy_pb2.ScheduleTrigger):
        return policy_pb2.PolicyTrigger(schedule=value)
    if isinstance(value, str):
        kind = value.strip().lower()
        if kind == "push":
            return policy_pb2.PolicyTrigger(push=policy_pb2.PushTrigger())
        if kind == "manual":
            return policy_pb2.PolicyTrigger(manual=policy_pb2.ManualTrigger())
        raise ValueError(f"unknown trigger {value!r}; use {_FORMS}")
    if not isinstance(value, Mapping):
        raise ValueError(f"a trigger is one of {_FORMS}")
    given = dict(value)
    if len(given) > 1:
        given = {k: v for k, v in given.items() if v is not None}
        if not given:
            return policy_pb2.PolicyTrigger()  # every alternative null: none chosen (push)
    if len(given) != 1:
        raise ValueError(f"a trigger is one of {_FORMS}")
    (kind, body), = given.items()
    if kind in ("push", "manual"):
        if body not in (None, {}):
            raise ValueError(f"trigger {kind} takes no settings")
        return trigger(kind)
    if kind != "schedule":
        raise ValueError(f"unknown trigger {kind!r}; use {_FORMS}")
    if not isinstance(body, Mapping):
        raise ValueError("schedule needs {interval: 30s} or {cron: '*/5 * * * *'} "
                         "(and optionally jitter)")
    body = {k: v for k, v in body.items() if v is not None}
    unknown = set(body) - {"interval", "cron", "jitter"}
    if unknown:
        raise ValueError(f"schedule: unknown {sorted(unknown)}; it takes interval, cron "
                         "and jitter")
    try:
        return schedule(interval=body.get("interval"), cron=str(body.get("cron") or ""),
                        jitter=body.get("jitter"))
    except ValueError as err:
        raise ValueError(f"schedule: {err}") from None


def trigger_kind(p: policy_pb2.Policy) -> str:
    """push (also when none is set: the default), schedule or manual."""
    return (p.trigger.WhichOneof("kind") if p.HasField("trigger") else None) or "push"


def trigger_text(p: policy_pb2.Policy) -> str:
    """`push`, `manual`, `every 30s, jitter 5s` or `cron */5 * * * *`."""
    kind = trigger_kind(p)
    if kind != "schedule":
        return kind
    s = p.trigger.schedule
    text = f"cron {s.cron}" if s.cron else f"every {duration_text(s.interval)}"
    if s.HasField("jitter") and (s.jitter.seconds or s.jitter.nanos):
        text += f", jitter {duration_text(s.jitter)}"
    return text


def trigger_doc(p: policy_pb2.Policy) -> str | dict[str, Any]:
    """The trigger as a mirrorctl YAML file writes it: `push`, `manual` or
    {schedule: {interval: 30s, jitter: 5s}}."""
    kind = trigger_kind(p)
    if kind != "schedule":
        return kind
    s = p.trigger.schedule
    body: dict[str, Any] = (
        {"cron": s.cron} if s.cron else {"interval": duration_text(s.interval)}
    )
    if s.HasField("jitter") and (s.jitter.seconds or s.jitter.nanos):
        body["jitter"] = duration_text(s.jitter)
    return {"schedule": body}


def referrer_kinds(values: Iterable[str]) -> list[str]:
    """Copy-referrer kinds, lowercased, from a list (or comma-separated items); ValueError
    naming the valid ones."""
    out: list[str] = []
    for item in values:
        for kind in str(item).split(","):
            kind = kind.strip().lower()
            if not kind:
                continue
            if kind not in REFERRER_KINDS:
                raise ValueError(f"unknown referrer kind {kind!r}; valid: "
                                 + ", ".join(REFERRER_KINDS))
            if kind not in out:
                out.append(kind)
    return out
