"""`mirrorctl endpoint ...`: registries the transfer service pulls from and pushes to."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from mirror.cli.context import CliError, Context
from mirror.cli.output import const, enum_name, when
from mirror.cli.parsing import command
from mirror.v1 import transfer_pb2

COLUMNS = [
    ("NAME", lambda e: e.name),
    ("URL", lambda e: e.url),
    ("USERNAME", lambda e: e.username),
    ("SECRET", lambda e: "stored" if e.has_secret else ""),
    ("WEBHOOK SECRET", lambda e: "stored" if e.has_webhook_secret else ""),
    ("SCAN ON PUSH", lambda e: e.scan_on_push),
]
WIDE = [
    ("ALIASES", lambda e: list(e.aliases)),
    ("CA", lambda e: "custom" if e.ca_pem else ""),
    ("INSECURE", lambda e: e.insecure_skip_verify),
    ("MAX CONCURRENCY", lambda e: e.max_concurrency or "default"),
    ("REQ/S", lambda e: e.requests_per_second or "unlimited"),
]


def _fields(e: transfer_pb2.Endpoint) -> list[tuple[str, object]]:
    return [
        ("name", e.name), ("url", e.url), ("username", e.username),
        ("secret", "stored (never shown)" if e.has_secret else "none"),
        ("webhook secret", "stored (never shown)" if e.has_webhook_secret else "none"),
        ("ca", "custom CA" if e.ca_pem else "system CAs"),
        ("insecure skip verify", e.insecure_skip_verify),
        ("max concurrency", e.max_concurrency or "default"),
        ("requests per second", e.requests_per_second or "unlimited"),
        ("scan on push", e.scan_on_push), ("aliases", list(e.aliases)),
        ("created", when(e.create_time)), ("updated", when(e.update_time)),
    ]


def read_secret(args: argparse.Namespace, kind: str = "secret") -> str | None:
    """A secret (`kind` "secret" or "webhook_secret") from stdin or an environment variable;
    None when neither was asked for. With both on stdin, the secret is the first line and the
    webhook secret the second."""
    flag = "--" + kind.replace("_", "-")
    if getattr(args, f"{kind}_stdin", False):
        if sys.stdin.isatty():
            sys.stderr.write(f"{kind.replace('_', ' ')} (end with Enter): ")
            sys.stderr.flush()
        value = sys.stdin.readline().rstrip("\r\n")
        if not value:
            raise CliError(f"{flag}-stdin: nothing was read from stdin",
                           hint="pipe it: printf '%s\\n' \"$PASSWORD\" | mirrorctl endpoint add "
                           "...")
        return value
    env = getattr(args, f"{kind}_env", None)
    if env:
        value = os.environ.get(env, "")
        if not value:
            raise CliError(f"{flag}-env {env}: the variable is unset or empty")
        return value
    return None


def _ca(args: argparse.Namespace) -> str | None:
    if not args.ca_file:
        return None
    try:
        return Path(args.ca_file).read_text()
    except OSError as err:
        raise CliError(f"cannot read --ca-file {args.ca_file}: {err.strerror}") from None


def _fields_given(a: argparse.Namespace) -> dict[str, Any]:
    """The endpoint fields given on the command line (None where a flag was not given)."""
    return {
        "url": a.url, "username": a.username, "secret": read_secret(a), "ca_pem": _ca(a),
        "insecure_skip_verify": a.insecure_skip_verify, "max_concurrency": a.max_concurrency,
        "requests_per_second": a.requests_per_second, "scan_on_push": a.scan_on_push,
        "aliases": a.alias, "webhook_secret": read_secret(a, "webhook_secret"),
    }


def add(ctx: Context) -> int:
    ep = ctx.client.transfers.create_endpoint(name=ctx.args.name, **_fields_given(ctx.args))
    if ctx.out.machine:
        ctx.out.data(ep)
    else:
        ctx.out.message(f"endpoint {ep.name} added ({ep.url})")
        ctx.out.message(f"check it with: mirrorctl endpoint test {ep.name} --repository REPO")
    return 0


def update(ctx: Context) -> int:
    ep = ctx.client.transfers.update_endpoint(ctx.args.name, **_fields_given(ctx.args))
    if ctx.out.machine:
        ctx.out.data(ep)
    else:
        ctx.out.message(f"endpoint {ep.name} updated")
    return 0


def list_(ctx: Context) -> int:
    items = list(ctx.client.transfers.iter_endpoints())
    ctx.out.rows(items, COLUMNS, wide=WIDE,
                 empty="no endpoints; add one with: mirrorctl endpoint add")
    return 0


def show(ctx: Context) -> int:
    ep = ctx.client.transfers.get_endpoint(ctx.args.name)
    ctx.out.record(ep, [(k, const(v)) for k, v in _fields(ep)])
    return 0


def test(ctx: Context) -> int:
    a = ctx.args
    resp = ctx.client.transfers.test_connection(
        a.name, repository=a.repository or "", check_push=a.push
    )
    ctx.out.rows(
        list(resp.checks),
        [
            ("STEP", lambda c: enum_name(transfer_pb2.ConnectionCheck.Step, c.step)),
            ("RESULT", lambda c: enum_name(transfer_pb2.ConnectionCheck.Result, c.result)),
            ("MESSAGE", lambda c: c.message),
        ],
        title=f"{a.name}: {'OK' if resp.ok else 'FAILED'}",
    )
    return 0 if resp.ok else 1


def rm(ctx: Context) -> int:
    ctx.client.transfers.delete_endpoint(ctx.args.name)
    ctx.out.message(f"endpoint {ctx.args.name} removed")
    return 0


def _settings(p: argparse.ArgumentParser, *, creating: bool) -> None:
    p.add_argument("name", help="endpoint name (lowercase letters, digits, '-' and '_')")
    p.add_argument("--url", required=creating, help="registry base URL, e.g. https://qa.example")
    p.add_argument("--username", help="registry user name")
    s = p.add_mutually_exclusive_group()
    s.add_argument("--secret-stdin", action="store_true",
                   help="read the password or token from the first line of stdin")
    s.add_argument("--secret-env", metavar="VAR",
                   help="take the password or token from environment variable VAR")
    p.add_argument("--ca-file", metavar="PEM", help="CA certificate of a private registry")
    p.add_argument("--insecure-skip-verify", action=argparse.BooleanOptionalAction,
                   default=None, help="do not verify the registry's TLS certificate")
    p.add_argument("--max-concurrency", type=int, metavar="N",
                   help="concurrent requests to this registry (0: service default)")
    p.add_argument("--requests-per-second", type=float, metavar="R",
                   help="request rate limit (0: unlimited)")
    p.add_argument("--scan-on-push", action=argparse.BooleanOptionalAction, default=None,
                   help="scan images after they are mirrored here")
    p.add_argument("--alias", action="append", metavar="HOST[:PORT]",
                   help="other name the registry reports in push events (repeatable; "
                   "replaces the list)")
    w = p.add_mutually_exclusive_group()
    w.add_argument("--webhook-secret-stdin", action="store_true",
                   help="read the bearer token the registry's notifications must carry from "
                   "stdin (the line after the secret when --secret-stdin is given too)")
    w.add_argument("--webhook-secret-env", metavar="VAR",
                   help="take the notifications' bearer token from environment variable VAR")


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    grp = command(sub, "endpoint", help="manage registries (endpoints) and their credentials",
                  examples="  mirrorctl endpoint list\n  mirrorctl endpoint show qa",
                  common=common)
    s = grp.add_subparsers(title="commands", metavar="COMMAND")
    p = command(s, "add", help="register a registry", func=add, common=common, examples=(
        "  printf %s \"$QA_PASSWORD\" | mirrorctl endpoint add qa --url https://qa.example "
        "--username ci --secret-stdin\n"
        "  mirrorctl endpoint add dev --url http://127.0.0.1:5000\n"
        "  mirrorctl endpoint add qa --url https://qa.example --username ci "
        "--secret-env QA_PASSWORD --ca-file qa-ca.pem\n"
        "  printf '%s\\n' \"$QA_PASSWORD\" \"$QA_HOOK_TOKEN\" | mirrorctl endpoint add qa "
        "--url https://qa.example \\\n"
        "      --username ci --secret-stdin --webhook-secret-stdin\n"
        "the webhook secret is the token of the registry's notification header "
        "(Authorization: Bearer TOKEN)\n"
        "secrets are never accepted as arguments (they would show in ps and shell history)"))
    _settings(p, creating=True)
    p = command(s, "update", help="change an endpoint's settings or secret", func=update,
                common=common, examples=(
                    "  mirrorctl endpoint update qa --max-concurrency 4\n"
                    "  printf %s \"$NEW\" | mirrorctl endpoint update qa --secret-stdin"))
    _settings(p, creating=False)
    command(s, "list", help="list endpoints", func=list_, common=common,
            examples="  mirrorctl endpoint list\n  mirrorctl endpoint list -o json")
    p = command(s, "show", help="show one endpoint (never its secret)", func=show,
                common=common, examples="  mirrorctl endpoint show qa")
    p.add_argument("name")
    p = command(s, "test", help="check reachability, TLS, login, pull and push, step by step",
                func=test, common=common, examples=(
                    "  mirrorctl endpoint test qa --repository team/website --push\n"
                    "exits 1 when a step fails"))
    p.add_argument("name")
    p.add_argument("--repository", help="repository to check pull (and push) permission on")
    p.add_argument("--push", action="store_true", help="check push permission too")
    p = command(s, "rm", help="remove an endpoint", func=rm, common=common,
                examples="  mirrorctl endpoint rm old-qa")
    p.add_argument("name")
