"""A policy's trigger and copy settings (issues 12 and 13): trigger, platforms, keep_newest,
deletions, copy_referrers and signature_wait. Their stored form, API form and checks.

Stored on PolicyRecord as plain values: `trigger_kind` ("" when the caller set none, which
means push), the schedule's interval / cron / jitter, platforms and copy_referrers as tuples,
durations in microseconds.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from croniter import CroniterError, croniter
from google.protobuf import duration_pb2
from mirror.v1 import policy_pb2

if TYPE_CHECKING:
    from policy_service.store import PolicyRecord

# Update-mask paths of these settings (each replaces the whole field).
MASK_PATHS = frozenset({
    "trigger", "platforms", "keep_newest", "deletions", "copy_referrers", "signature_wait",
})
REFERRER_KINDS = ("signatures", "attestations", "sboms", "all")
MAX_SIGNATURE_WAIT_US = 24 * 3600 * 1_000_000
MIN_INTERVAL_US = 1_000_000
MAX_PLATFORMS = 32
# os/arch[/variant] as OCI image indexes spell them ("linux/amd64", "linux/arm64/v8").
PLATFORM_RE = re.compile(r"[a-z0-9][a-z0-9._-]*/[a-z0-9][a-z0-9._-]*(/[a-z0-9][a-z0-9._-]*)?")
# A fixed instant, so the shortest gap of a cron expression does not depend on today's date.
_CRON_BASE = datetime(2026, 1, 1, tzinfo=UTC)
_CRON_SAMPLES = 64

Violation = tuple[str, str]


# The kinds of Policy.trigger (its oneof's field names); a policy that sets none is "push".
TRIGGER_KINDS = ("push", "schedule", "manual")


def _us(d: duration_pb2.Duration) -> int:
    return int(d.seconds * 1_000_000 + d.nanos // 1000)


def _duration(us: int) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromMicroseconds(us)
    return d


def record_fields(p: policy_pb2.Policy, paths: Iterable[str] | None = None) -> dict[str, Any]:
    """PolicyRecord fields taken from `p`: all of them, or those named by mask `paths`."""
    names = MASK_PATHS if paths is None else MASK_PATHS & set(paths)
    out: dict[str, Any] = {}
    if "trigger" in names:
        kind = p.trigger.WhichOneof("kind") if p.HasField("trigger") else None
        s = p.trigger.schedule
        out.update(
            trigger_kind=kind or "",
            schedule_interval_us=_us(s.interval) if kind == "schedule" else 0,
            schedule_cron=s.cron if kind == "schedule" else "",
            schedule_jitter_us=_us(s.jitter) if kind == "schedule" else 0,
        )
    if "platforms" in names:
        out["platforms"] = tuple(p.platforms)
    if "keep_newest" in names:
        out["keep_newest"] = p.keep_newest
    if "deletions" in names:
        out["deletions"] = int(p.deletions)
    if "copy_referrers" in names:
        out["copy_referrers"] = tuple(p.copy_referrers)
    if "signature_wait" in names:
        out["signature_wait_us"] = _us(p.signature_wait)
    return out


def trigger_proto(r: PolicyRecord) -> policy_pb2.PolicyTrigger | None:
    """The stored trigger (None: the caller set none, which means push)."""
    if r.trigger_kind == "push":
        return policy_pb2.PolicyTrigger(push=policy_pb2.PushTrigger())
    if r.trigger_kind == "manual":
        return policy_pb2.PolicyTrigger(manual=policy_pb2.ManualTrigger())
    if r.trigger_kind == "schedule":
        s = policy_pb2.ScheduleTrigger(cron=r.schedule_cron)
        if r.schedule_interval_us:
            s.interval.CopyFrom(_duration(r.schedule_interval_us))
        if r.schedule_jitter_us:
            s.jitter.CopyFrom(_duration(r.schedule_jitter_us))
        return policy_pb2.PolicyTrigger(schedule=s)
    return None


def proto_fields(r: PolicyRecord) -> dict[str, Any]:
    """Policy message keywords for the settings that are set (unset ones stay default)."""
    out: dict[str, Any] = {}
    trigger = trigger_proto(r)
    if trigger is not None:
        out["trigger"] = trigger
    if r.platforms:
        out["platforms"] = list(r.platforms)
    if r.keep_newest:
        out["keep_newest"] = r.keep_newest
    if r.deletions:
        out["deletions"] = r.deletions
    if r.copy_referrers:
        out["copy_referrers"] = list(r.copy_referrers)
    if r.signature_wait_us:
        out["signature_wait"] = _duration(r.signature_wait_us)
    return out


def result_fields(r: PolicyRecord) -> dict[str, Any]:
    """PolicyResult keywords: what the caller needs to start the copy without another read."""
    out: dict[str, Any] = {}
    if r.platforms:
        out["platforms"] = list(r.platforms)
    if r.copy_referrers:
        out["copy_referrers"] = list(r.copy_referrers)
    trigger = trigger_proto(r)
    if trigger is not None:
        out["trigger"] = trigger
    return out


def cron_problem(expr: str) -> str | None:
    """Why `expr` is not a usable cron expression: five fields (minute hour day-of-month month
    day-of-week) or a macro such as @hourly, that fires at least once. None when it is.

    A sixth field is refused: tools disagree on whether it means seconds or years.
    """
    fields = expr.split()
    macro = len(fields) == 1 and expr.strip().startswith("@")
    if len(expr) > 200 or not (len(fields) == 5 or macro) or not croniter.is_valid(expr):
        return (f"{expr[:200]!r} is not a valid cron expression (five fields: minute hour "
                "day-of-month month day-of-week, or @hourly/@daily/...)")
    try:
        cron_min_gap_us(expr)
    except (CroniterError, ValueError):
        return f"{expr!r} never fires (no such date)"
    return None


def cron_min_gap_us(expr: str) -> int:
    """The shortest time between two runs of a valid cron expression (sampled)."""
    it = croniter(expr, _CRON_BASE)
    prev = it.get_next(datetime)
    gap = None
    for _ in range(_CRON_SAMPLES):
        nxt = it.get_next(datetime)
        step = int((nxt - prev).total_seconds() * 1_000_000)
        gap = step if gap is None else min(gap, step)
        prev = nxt
    assert gap is not None
    return gap


def _trigger_problems(r: PolicyRecord) -> list[Violation]:
    if r.trigger_kind != "schedule":
        return []
    f = "trigger.schedule"
    if r.schedule_interval_us and r.schedule_cron:
        return [(f, "set exactly one of interval and cron, not both")]
    if not r.schedule_interval_us and not r.schedule_cron:
        return [(f, "set exactly one of interval (e.g. 30s) and cron (e.g. '*/5 * * * *')")]
    out: list[Violation] = []
    period = 0
    if r.schedule_cron:
        problem = cron_problem(r.schedule_cron)
        if problem:
            return [(f + ".cron", problem)]
        period = cron_min_gap_us(r.schedule_cron)
    elif r.schedule_interval_us < MIN_INTERVAL_US:
        out.append((f + ".interval", "must be at least 1s"))
    else:
        period = r.schedule_interval_us
    if r.schedule_jitter_us < 0:
        out.append((f + ".jitter", "must not be negative"))
    elif period and r.schedule_jitter_us >= period:
        what = "shortest gap of the cron expression" if r.schedule_cron else "interval"
        out.append((f + ".jitter", f"must be shorter than the {what} ({period / 1e6:g}s)"))
    return out


def problems(r: PolicyRecord) -> list[Violation]:
    """Every problem of the settings of `r`, as (field, description) without a prefix."""
    out = _trigger_problems(r)
    if len(r.platforms) > MAX_PLATFORMS:
        out.append(("platforms", f"at most {MAX_PLATFORMS} platforms"))
    seen: set[str] = set()
    for i, plat in enumerate(r.platforms[:MAX_PLATFORMS]):
        if not PLATFORM_RE.fullmatch(plat):
            out.append((f"platforms[{i}]", f"{plat[:100]!r} is not os/arch[/variant] "
                        "(e.g. linux/amd64, linux/arm64/v8)"))
        elif plat in seen:
            out.append((f"platforms[{i}]", f"{plat!r} is listed twice"))
        seen.add(plat)
    if r.keep_newest < 0:
        out.append(("keep_newest", "must not be negative (0: every matching tag)"))
    if r.deletions not in policy_pb2.DeletionMode.values():
        out.append(("deletions", f"unknown value {r.deletions}; use DELETION_MODE_OFF, "
                    "_PROPAGATE or _DRY_RUN"))
    for i, kind in enumerate(r.copy_referrers):
        if kind not in REFERRER_KINDS:
            out.append((f"copy_referrers[{i}]", f"unknown referrer kind {kind[:100]!r}; use "
                        + ", ".join(REFERRER_KINDS)))
    if r.signature_wait_us < 0:
        out.append(("signature_wait", "must not be negative"))
    elif r.signature_wait_us > MAX_SIGNATURE_WAIT_US:
        out.append(("signature_wait", "must be at most 24h"))
    return out
