"""`mirrorctl`: the operator command line of image-mirror."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import grpc

from mirror import errors
from mirror.channel import DEFAULT_ADDRESS
from mirror.cli import (
    cmd_declarative,
    cmd_endpoint,
    cmd_gateway,
    cmd_key,
    cmd_policy,
    cmd_runs,
    cmd_scan,
    cmd_status,
    cmd_subscription,
    cmd_transfer,
    completion,
)
from mirror.cli.context import (
    EXIT_CODES_HELP,
    EXIT_INVALID,
    EXIT_NOT_FOUND,
    EXIT_SERVER,
    EXIT_USAGE,
    CliError,
    Context,
)
from mirror.cli.output import FORMATS
from mirror.cli.parsing import command
from mirror.cmdline import version

_EXAMPLES = """examples:
  mirrorctl status
  printf %s "$QA_PASSWORD" | mirrorctl endpoint add qa --url https://qa.example \\
      --username ci --secret-stdin
  mirrorctl policy create -f policy.yaml
  mirrorctl key add ci --public-key cosign.pub    # for signed_by "ci" rules
  mirrorctl transfer start dev/team/app:1.4 --to qa/team/app --watch
  mirrorctl runs list -o json
  mirrorctl notify dev team/app:1.4      # a CI system without webhooks
  mirrorctl apply -f mirror.yaml --dry-run

connection: --address or MIRROR_ADDRESS (default {address}); a token from --token-file,
MIRROR_TOKEN or --token; --tls with --ca/--cert/--key for TLS and mutual TLS.
shell completion: source <(mirrorctl completion bash)

"""

_EXIT_FOR_CODE = {
    grpc.StatusCode.NOT_FOUND: EXIT_NOT_FOUND,
    grpc.StatusCode.INVALID_ARGUMENT: EXIT_INVALID,
    grpc.StatusCode.FAILED_PRECONDITION: EXIT_INVALID,
    grpc.StatusCode.ALREADY_EXISTS: EXIT_INVALID,
    grpc.StatusCode.ABORTED: EXIT_INVALID,
    grpc.StatusCode.OUT_OF_RANGE: EXIT_INVALID,
}

_HINTS = {
    grpc.StatusCode.UNAVAILABLE: "is the server running there? set --address or MIRROR_ADDRESS "
    "(and --tls/--ca when it serves TLS)",
    grpc.StatusCode.UNAUTHENTICATED: "pass a valid token: --token-file FILE, MIRROR_TOKEN, "
    "or --token",
    grpc.StatusCode.PERMISSION_DENIED: "this needs an admin token",
    grpc.StatusCode.ALREADY_EXISTS: "change it with the 'update' command instead, or pick "
    "another name",
    grpc.StatusCode.ABORTED: "it changed since it was read; show it again and retry",
    grpc.StatusCode.DEADLINE_EXCEEDED: "the server is slow to answer; retry with --timeout",
    grpc.StatusCode.UNIMPLEMENTED: "this server does not run that service; check --address",
}


def _connection_options(p: argparse.ArgumentParser, default: object) -> None:
    """Options accepted before or after the command (default SUPPRESS in sub-commands)."""
    d = default
    p.add_argument("--address", default=d, metavar="HOST:PORT",
                   help=f"server address (env MIRROR_ADDRESS, default {DEFAULT_ADDRESS})")
    p.add_argument("--token", default=d, help="bearer token (prefer --token-file or MIRROR_TOKEN:"
                   " arguments show in ps)")
    p.add_argument("--token-file", default=d, metavar="FILE", help="file holding the token")
    p.add_argument("--tls", action="store_true", default=d, help="connect with TLS")
    p.add_argument("--ca", default=d, metavar="PEM", help="CA of the server certificate")
    p.add_argument("--cert", default=d, metavar="PEM", help="client certificate (mutual TLS)")
    p.add_argument("--key", default=d, metavar="PEM", help="client key (mutual TLS)")
    p.add_argument("--tls-server-name", default=d, metavar="NAME",
                   help="name to verify in the server certificate")
    p.add_argument("--timeout", type=float, default=d, metavar="SECONDS",
                   help="per-call deadline (default 60)")
    p.add_argument("-o", "--output", choices=FORMATS, default=d,
                   help="output format: table (default), wide (more columns), json or yaml "
                   "(every field; enum values as the flags spell them)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mirrorctl",
        description="Operate image-mirror: endpoints, policies, transfers, runs, scans.",
        epilog=_EXAMPLES.format(address=DEFAULT_ADDRESS) + EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        # Abbreviations would make `transfer start ... --to` ambiguous with --token.
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"mirrorctl {version()}")
    _connection_options(parser, None)
    parser.set_defaults(output="table", timeout=60.0, tls=False)
    common = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    _connection_options(common, argparse.SUPPRESS)
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    cmd_endpoint.register(sub, common)
    cmd_policy.register(sub, common)
    cmd_transfer.register(sub, common)
    cmd_runs.register(sub, common)
    cmd_scan.register(sub, common)
    cmd_status.register(sub, common)
    cmd_declarative.register(sub, common)
    cmd_gateway.register(sub, common)
    cmd_subscription.register(sub, common)
    cmd_key.register(sub, common)
    p = command(sub, "completion", help="print a shell completion script", common=common,
                func=completion.make_handler(parser),  # type: ignore[arg-type]
                examples="  source <(mirrorctl completion bash)\n"
                "  mirrorctl completion zsh > ~/.zfunc/_mirrorctl")
    p.add_argument("shell", choices=["bash", "zsh"])
    return parser


def report(ctx: Context, err: errors.MirrorError) -> int:
    """Print a server error with its details and a hint; the exit code for it."""
    con = ctx.out.err
    con.print(f"error: {err.message or err.code.name}", highlight=False, markup=False)
    for v in err.field_violations:
        con.print(f"  {v.field}: {v.description}", highlight=False, markup=False)
    for p in err.precondition_violations:
        subject = f" {p.subject}" if p.subject else ""
        con.print(f"  {p.type}{subject}: {p.description}", highlight=False, markup=False)
    hint = _HINTS.get(err.code)
    if err.code == grpc.StatusCode.UNAVAILABLE:
        hint = f"cannot reach {ctx.address}: {hint}"
    if hint:
        con.print(f"hint: {hint}", highlight=False, markup=False)
    return _EXIT_FOR_CODE.get(err.code, EXIT_SERVER)


def main(argv: Sequence[str] | None = None) -> int:
    """Run mirrorctl; returns (and, as a script, exits with) the documented exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return EXIT_USAGE
    ctx = Context(args)
    try:
        return int(args.func(ctx))
    except CliError as err:
        ctx.out.err.print(f"error: {err.message}", highlight=False, markup=False)
        if err.hint:
            ctx.out.err.print(f"hint: {err.hint}", highlight=False, markup=False)
        return err.exit_code
    except errors.MirrorError as err:
        return report(ctx, err)
    except ValueError as err:
        ctx.out.err.print(f"error: {err}", highlight=False, markup=False)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Output piped into `head`: not an error. Silence the flush at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        ctx.close()


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
