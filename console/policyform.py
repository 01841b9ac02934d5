"""New mirror's form -> a Policy message (direction, trigger, tag, advanced settings)."""

from __future__ import annotations

import re
from typing import Any

from mirror.v1 import common_pb2, policy_pb2

from console.views.forms import FormError, checked, text

_DURATION = re.compile(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s?)?")
REFERRERS = ("signatures", "attestations", "sboms")
DELETIONS = {
    "off": policy_pb2.DELETION_MODE_OFF,
    "propagate": policy_pb2.DELETION_MODE_PROPAGATE,
    "dry_run": policy_pb2.DELETION_MODE_DRY_RUN,
}


def parse_duration(raw: str, field: str) -> int:
    """Seconds of "90", "30s", "15m", "1h30m"; FormError naming `field` otherwise."""
    m = _DURATION.fullmatch(raw.strip().lower().replace(" ", ""))
    if not raw.strip() or m is None or not any(m.groups()):
        raise FormError(field, f"{field.replace('_', ' ')}: a duration such as 30m, 1h or 90s")
    h, mi, s = (int(g or 0) for g in m.groups())
    return h * 3600 + mi * 60 + s


def registry_name(form: Any) -> str:
    """The remote registry: an existing endpoint, or the form's new one."""
    if text(form, "registry") == "__new__":
        return text(form, "new_name")
    return text(form, "registry")


def trigger_of(form: Any) -> policy_pb2.PolicyTrigger | None:
    """None for registry pushes (the server's default), else a schedule or manual trigger."""
    kind = text(form, "trigger")
    if kind == "manual":
        return policy_pb2.PolicyTrigger(manual=policy_pb2.ManualTrigger())
    if kind != "schedule":
        return None
    schedule = policy_pb2.ScheduleTrigger()
    cron = text(form, "poll_cron")
    if cron:
        schedule.cron = cron
    else:
        schedule.interval.FromSeconds(parse_duration(text(form, "poll_interval"),
                                                     "poll_interval"))
    return policy_pb2.PolicyTrigger(schedule=schedule)


def policy_from_form(form: Any) -> policy_pb2.Policy:
    """The Policy a New mirror form describes; this repository is the source of a push
    mirror and the target of a pull mirror."""
    local = (text(form, "endpoint"), text(form, "repository"))
    remote = (registry_name(form), text(form, "remote_repository"))
    src, dst = (remote, local) if text(form, "direction") == "pull" else (local, remote)
    if not remote[0]:
        raise FormError("registry", "choose the remote registry, or name the new one")
    if not local[0]:
        raise FormError("endpoint", "choose the registry of this repository")
    template = "%n" if text(form, "tag_mode") != "template" else text(form, "tag_template")
    policy = policy_pb2.Policy(
        name=text(form, "name"), description=text(form, "description"),
        source=policy_pb2.PolicySource(endpoint=src[0], repository=src[1]),
        target=common_pb2.Target(endpoint=dst[0], repository=dst[1]),
        rule=text(form, "rule"), tag_template=template, time_zone=text(form, "time_zone"),
        overwrite=(policy_pb2.OVERWRITE_NEVER if text(form, "overwrite") == "never"
                   else policy_pb2.OVERWRITE_ALWAYS),
        allow_incomplete_facts=checked(form, "allow_incomplete_facts"),
        enabled=True,
    )
    trigger = trigger_of(form)
    if trigger is not None:
        policy.trigger.CopyFrom(trigger)
    platforms = [p.strip() for p in text(form, "platforms").split(",") if p.strip()]
    policy.platforms.extend(platforms)
    keep = text(form, "keep_newest")
    if keep:
        if not keep.isdigit():
            raise FormError("keep_newest", "keep newest: a whole number (0: every tag)")
        policy.keep_newest = int(keep)
    getall = getattr(form, "getall", None)
    referrers = [r for r in (getall("copy_referrers", []) if getall else []) if r in REFERRERS]
    policy.copy_referrers.extend(referrers)
    deletions = text(form, "deletions")
    if deletions in DELETIONS and deletions != "off":
        policy.deletions = DELETIONS[deletions]
    return policy


def describe_trigger(policy: policy_pb2.Policy) -> str:
    """The trigger in words, for the Mirrors tab and the policy page."""
    kind = policy.trigger.WhichOneof("kind") if policy.HasField("trigger") else None
    if kind == "manual":
        return "only when applied"
    if kind == "schedule":
        s = policy.trigger.schedule
        if s.cron:
            return f"polls on cron {s.cron}"
        return f"polls every {_duration_text(s.interval.seconds)}"
    return "on push"


def _duration_text(seconds: int) -> str:
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    parts = [f"{h}h" if h else "", f"{m}m" if m else "", f"{s}s" if s else ""]
    return "".join(parts) or "0s"
