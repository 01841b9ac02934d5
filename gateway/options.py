"""Command line options the gateway shares with the embedded stack."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

SECRET_ENV = "MIRROR_WEBHOOK_SECRET"


def add_gateway_arguments(p: argparse.ArgumentParser, http_default: str) -> None:
    g = p.add_argument_group("gateway")
    g.add_argument(
        "--http-listen",
        default=http_default,
        help="HOST:PORT of the webhook receiver (/events), /metrics and /healthz",
    )
    g.add_argument(
        "--webhook-secret-file",
        default="",
        help=f"file holding the shared webhook secret (or set ${SECRET_ENV}); registries send "
        "it as 'Authorization: Bearer SECRET'; required when --http-listen is not loopback",
    )
    g.add_argument(
        "--notify-url",
        action="append",
        default=[],
        type=notify_url,
        help="POST every outbound event here, unsigned (repeatable; signed subscriptions: "
        "mirrorctl subscription create, docs/events.md)",
    )
    g.add_argument(
        "--inbox-concurrency", type=int, default=8, help="events acted on at once"
    )
    g.add_argument(
        "--reconcile-interval",
        type=float,
        default=300.0,
        help="seconds between reconcile sweeps of every enabled policy (0: off)",
    )
    g.add_argument(
        "--max-hops",
        type=int,
        default=8,
        help="longest promotion chain through image-mirror's own pushes; a run beyond it is "
        "blocked (stops loops through systems the policies cannot see)",
    )


def notify_url(value: str) -> str:
    """A --notify-url value, refused at start when events could never be sent there (or it
    holds a password: ListSubscriptions shows these URLs)."""
    from gateway.subscriptions import url_problem

    problem = url_problem(value)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return value


def webhook_secret(args: argparse.Namespace) -> str:
    """The secret from --webhook-secret-file or the environment ('' when none)."""
    if args.webhook_secret_file:
        return Path(args.webhook_secret_file).read_text().strip()
    return os.environ.get(SECRET_ENV, "").strip()
