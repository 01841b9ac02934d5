"""`policy create` flags for the trigger and copy settings, read into the Policy message.

    --schedule 30s [--jitter 5s] | --cron '*/5 * * * *' | --manual | --push
    --platform linux/amd64 (repeatable)   --keep-newest 3   --deletions propagate
    --copy-referrers signatures[,sboms]   --signature-wait 10m

A flag replaces what a `-f` file says for that field (`--jitter` alone adjusts the file's
schedule).
"""

from __future__ import annotations

import argparse

from mirror import enums, policyfields
from mirror.cli.context import CliError
from mirror.v1 import policy_pb2


def _duration_arg(text: str) -> str:
    policyfields.duration(text)  # refused here, by argparse, with the flag's name
    return text


def _deletions_arg(text: str) -> str:
    return text.strip().lower().replace("-", "_")


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("trigger (default push: registry events and notify)")
    x = g.add_mutually_exclusive_group()
    x.add_argument("--schedule", type=_duration_arg, metavar="INTERVAL",
                   help="poll the source every INTERVAL (30s, 5m, 1h): a pull mirror")
    x.add_argument("--cron", metavar="EXPR",
                   help="poll the source on a cron expression ('*/5 * * * *', UTC or "
                   "--time-zone)")
    x.add_argument("--manual", action="store_true",
                   help="only 'mirrorctl policy apply' starts it")
    x.add_argument("--push", action="store_true",
                   help="registry events and notify start it (the default)")
    g.add_argument("--jitter", type=_duration_arg, metavar="DURATION",
                   help="delay each poll by a random part of DURATION")
    c = p.add_argument_group("what is copied")
    c.add_argument("--platform", action="append", metavar="OS/ARCH",
                   help="copy only this platform of an index (repeatable; default all)")
    c.add_argument("--keep-newest", type=int, metavar="K",
                   help="only the newest K matching tags of each repository (0: all)")
    c.add_argument("--deletions", type=_deletions_arg,
                   choices=enums.choices(policy_pb2.DeletionMode.DESCRIPTOR),
                   help="a tag deleted at the source: off (default), propagate (delete the "
                   "destination tag this policy wrote) or dry_run (record it only)")
    c.add_argument("--copy-referrers", action="append", metavar="KIND[,KIND]",
                   help="copy referrers after the image: "
                   + ", ".join(policyfields.REFERRER_KINDS) + " (repeatable)")
    c.add_argument("--signature-wait", type=_duration_arg, metavar="DURATION",
                   help="how long an image without the signature a signed/signed_by rule "
                   "needs waits for it (e.g. 10m; default: the server's)")


def apply(a: argparse.Namespace, policy: policy_pb2.Policy) -> None:
    """Set the fields whose flags were given on `policy`."""
    if a.manual or a.push:
        if a.jitter:
            raise CliError("--jitter goes with --schedule or --cron")
        policy.trigger.CopyFrom(policyfields.trigger("manual" if a.manual else "push"))
    elif a.schedule or a.cron:
        policy.trigger.CopyFrom(policyfields.schedule(
            interval=a.schedule, cron=a.cron or "", jitter=a.jitter))
    elif a.jitter:
        if policyfields.trigger_kind(policy) != "schedule":
            raise CliError("--jitter goes with --schedule or --cron (or a file's "
                           "trigger: {schedule: ...})")
        policy.trigger.schedule.jitter.CopyFrom(policyfields.duration(a.jitter))
    if a.platform is not None:
        del policy.platforms[:]
        policy.platforms.extend(a.platform)
    if a.keep_newest is not None:
        if a.keep_newest < 0:
            raise CliError("--keep-newest must not be negative (0: every matching tag)")
        policy.keep_newest = a.keep_newest
    if a.deletions is not None:
        policy.deletions = enums.value_of(  # type: ignore[assignment]
            policy_pb2.DeletionMode.DESCRIPTOR, a.deletions)
    if a.copy_referrers is not None:
        try:
            kinds = policyfields.referrer_kinds(a.copy_referrers)
        except ValueError as err:
            raise CliError(f"--copy-referrers: {err}") from None
        del policy.copy_referrers[:]
        policy.copy_referrers.extend(kinds)
    if a.signature_wait is not None:
        policy.signature_wait.CopyFrom(policyfields.duration(a.signature_wait))
