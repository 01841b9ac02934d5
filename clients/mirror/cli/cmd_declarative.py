"""`mirrorctl apply -f mirror.yaml` and `mirrorctl export`."""

from __future__ import annotations

import argparse
import sys

import yaml

from mirror import errors
from mirror.cli import declarative, preflight
from mirror.cli.context import EXIT_INVALID, Context
from mirror.cli.parsing import command

_ORDER = {"create": 0, "update": 1, "delete": 2, "unchanged": 3}
_DONE = {"create": "created", "update": "updated", "delete": "deleted"}


def apply(ctx: Context) -> int:
    a = ctx.args
    desired = declarative.load(a.file)
    changes = declarative.plan(
        ctx.client, desired, prune=a.prune, update_secrets=a.update_secrets
    )
    counts = {k: sum(1 for c in changes if c.action == k) for k in _ORDER}
    # Everything is checked first: one bad object and nothing is changed.
    problems = preflight.check(ctx.client, desired, changes)
    if ctx.out.machine:
        ctx.out.data({"dry_run": a.dry_run, "changes": [c.as_dict() for c in changes],
                      "errors": [p.as_dict() for p in problems]})
    else:
        ctx.out.rows(
            sorted(changes, key=lambda c: _ORDER[c.action]),
            [("ACTION", lambda c: c.action), ("KIND", lambda c: c.kind),
             ("NAME", lambda c: c.name), ("FIELDS", lambda c: c.fields)],
            title="plan", empty="nothing declared",
        )
        ctx.out.message(
            f"{counts['create']} to create, {counts['update']} to update, "
            f"{counts['delete']} to delete, {counts['unchanged']} unchanged"
            + (" (dry run: nothing changed)" if a.dry_run else "")
        )
    for p in problems:
        ctx.out.err.print(f"error: {p.kind} {p.name}: {p.message}", highlight=False,
                          markup=False)
    if problems:
        ctx.out.err.print(f"{len(problems)} problem(s): nothing was changed", highlight=False,
                          markup=False)
        return EXIT_INVALID
    if a.dry_run:
        return 0
    todo = [(c, c.run) for c in changes if c.run is not None and c.action != "unchanged"]
    for done, (change, run) in enumerate(todo):
        try:
            run()
        except errors.MirrorError:
            # Refused by a check only the server can make at write time (UpdatePolicy has no
            # validate_only): say how far it got.
            ctx.out.err.print(f"stopped at {change.action} {change.kind} {change.name}: "
                              f"{done} of {len(todo)} changes made", highlight=False,
                              markup=False)
            raise
        ctx.out.message(f"{_DONE[change.action]} {change.kind} {change.name}")
    return 0


def export(ctx: Context) -> int:
    doc = declarative.export(ctx.client)
    if ctx.out.fmt == "json":
        ctx.out.data(doc)
    else:
        sys.stdout.write(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    return 0


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    p = command(sub, "apply", help="make endpoints and policies match a YAML file",
                func=apply, common=common, examples=(
                    "  mirrorctl apply -f mirror.yaml --dry-run   # print the plan only\n"
                    "  mirrorctl apply -f mirror.yaml\n"
                    "  mirrorctl apply -f mirror.yaml --prune     # also delete what the file "
                    "lacks\n"
                    "mirror.yaml:\n"
                    "  endpoints:\n"
                    "    - name: qa\n      url: https://qa.example\n      username: ci\n"
                    "      secretFrom: {env: QA_PASSWORD}   # or {file: PATH}; never inline\n"
                    "      webhookSecretFrom: {env: QA_HOOK_TOKEN}   # optional\n"
                    "  policies:\n"
                    "    - name: promote-stable\n"
                    "      source: {endpoint: dev, repository: team/website}\n"
                    "      rule: tag endswith \"stable\"\n"
                    "      target: {endpoint: qa, repository: qa/website}\n"
                    "      overwrite: never\n"
                    "every object is validated on the server first (rules, templates, referenced\n"
                    "endpoints): on any error nothing is changed and the exit code is 4, with\n"
                    "--dry-run too. Fields left out keep the server's value. Secrets cannot be\n"
                    "read back: they are written on create, when the server has none, or with\n"
                    "--update-secrets. An entry may be what 'policy get NAME -o json' prints:\n"
                    "output-only keys (id, etag, times, disabled_reason...) and nulls are "
                    "ignored."))
    p.add_argument("-f", "--file", required=True,
                   help="the declarative YAML (or JSON) file; - reads stdin")
    p.add_argument("--dry-run", action="store_true",
                   help="validate everything and print the plan; change nothing")
    p.add_argument("--prune", action="store_true",
                   help="delete endpoints and policies that the file does not declare")
    p.add_argument("--update-secrets", action="store_true",
                   help="write every declared secret again (to rotate them)")
    command(sub, "export", help="print endpoints and policies in the apply format", func=export,
            common=common, examples=(
                "  mirrorctl export > mirror.yaml\n  mirrorctl export -o json\n"
                "secrets are written as references (secretFrom: {env: MIRROR_SECRET_<NAME>},\n"
                "webhookSecretFrom: {env: MIRROR_WEBHOOK_SECRET_<NAME>})"))
