"""`mirrorctl key ...`: public keys that `signed_by "NAME"` rules verify signatures against."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mirror.cli.context import EXIT_INVALID, CliError, Context
from mirror.cli.output import const, when
from mirror.cli.parsing import command
from mirror.v1 import policy_pb2

COLUMNS = [
    ("NAME", lambda k: k.name),
    ("ALGORITHM", lambda k: k.algorithm),
    ("FINGERPRINT", lambda k: k.fingerprint),
    ("CREATED", lambda k: when(k.create_time)),
]


def _fields(k: policy_pb2.TrustedKey) -> list[tuple[str, object]]:
    return [
        ("name", k.name), ("algorithm", k.algorithm), ("fingerprint", k.fingerprint),
        ("created", when(k.create_time)), ("public key", k.public_key_pem.strip()),
    ]


def _read_pem(path: str) -> str:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as err:
        raise CliError(f"cannot read {path}: {err.strerror}") from None
    except UnicodeDecodeError:
        raise CliError(f"{path} is not PEM text", EXIT_INVALID,
                       hint="give the PEM public key (-----BEGIN PUBLIC KEY-----), e.g. "
                       "cosign.pub") from None
    if not text.strip():
        raise CliError(f"{path} is empty", EXIT_INVALID)
    return text


def add(ctx: Context) -> int:
    a = ctx.args
    key = ctx.client.policies.create_trusted_key(
        name=a.name, public_key_pem=_read_pem(a.public_key)
    )
    if ctx.out.machine:
        ctx.out.data(key)
    else:
        ctx.out.message(f"trusted key {key.name} added ({key.algorithm}, fingerprint "
                        f"{key.fingerprint}); rules can use: signed_by \"{key.name}\"")
    return 0


def list_(ctx: Context) -> int:
    items = list(ctx.client.policies.iter_trusted_keys())
    ctx.out.rows(items, COLUMNS,
                 empty="no trusted keys; add one with: mirrorctl key add NAME --public-key FILE")
    return 0


def get(ctx: Context) -> int:
    k = ctx.client.policies.get_trusted_key(ctx.args.name)
    if ctx.out.machine:
        ctx.out.data(k)
    else:
        ctx.out.record(k, [(n, const(v)) for n, v in _fields(k)])
    return 0


def rm(ctx: Context) -> int:
    ctx.client.policies.delete_trusted_key(ctx.args.name)
    ctx.out.message(f"trusted key {ctx.args.name} removed")
    return 0


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    grp = command(sub, "key", help="trusted public keys for signed_by rules", common=common,
                  examples="  mirrorctl key add ci --public-key cosign.pub\n"
                  "  mirrorctl key list")
    s = grp.add_subparsers(title="commands", metavar="COMMAND")
    p = command(s, "add", help="register a public key (ECDSA P-256 or Ed25519, PEM)", func=add,
                common=common, examples=(
                    "  mirrorctl key add ci --public-key cosign.pub\n"
                    "  vault read -field=pub ci-signing | mirrorctl key add ci --public-key -\n"
                    "then a rule can require it: signed_by \"ci\""))
    p.add_argument("name", metavar="NAME",
                   help="the name rules use (lowercase letters, digits, '-' and '_')")
    p.add_argument("--public-key", required=True, metavar="FILE",
                   help="PEM SubjectPublicKeyInfo file (- for stdin)")
    command(s, "list", help="list trusted keys", func=list_, common=common,
            examples="  mirrorctl key list\n  mirrorctl key list -o json")
    p = command(s, "get", help="show a trusted key and its PEM", func=get, common=common,
                aliases=("show",), examples="  mirrorctl key get ci\n"
                "  mirrorctl key get ci -o json | jq -r .public_key_pem > ci.pub")
    p.add_argument("name", metavar="NAME")
    p = command(s, "rm", help="remove a trusted key (refused while a rule names it)", func=rm,
                common=common, examples="  mirrorctl key rm ci\n"
                "exits 4 while a policy's rule names the key (the policies are listed)")
    p.add_argument("name", metavar="NAME")
