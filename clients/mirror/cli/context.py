"""What every command gets: parsed options, the output writer and a lazily opened client."""

from __future__ import annotations

import argparse
import os
from functools import cached_property
from pathlib import Path

import grpc

from mirror.channel import DEFAULT_ADDRESS, TlsArg, TlsOptions
from mirror.cli.output import Output
from mirror.client import Client

# Exit codes scripts can rely on (also listed in `mirrorctl --help`).
EXIT_OK = 0
EXIT_SERVER = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_INVALID = 4

# Seconds one call may wait, as the server's RetryInfo asks, after rate-limit refusals (e.g.
# `apply -f` checking many rules) before the error is reported.
RATE_LIMIT_WAIT = 5.0

EXIT_CODES_HELP = """exit codes:
  0  success
  1  the server reported an error (or could not be reached)
  2  usage error (bad option or argument)
  3  not found (policy, endpoint, transfer, scan)
  4  invalid input or failed precondition (rule errors, validation, stale etag)"""


class CliError(Exception):
    """A problem found on this side, with the exit code and a hint on what to do next."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.hint = hint


class Context:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Output(getattr(args, "output", "table") or "table")

    @property
    def address(self) -> str:
        return (
            getattr(self.args, "address", None)
            or os.environ.get("MIRROR_ADDRESS")
            or DEFAULT_ADDRESS
        )

    def token(self) -> str | None:
        """--token, else --token-file, else MIRROR_TOKEN."""
        token = getattr(self.args, "token", None)
        if token:
            return token
        path = getattr(self.args, "token_file", None)
        if path:
            try:
                text = Path(path).read_text().strip()
            except OSError as err:
                raise CliError(f"cannot read --token-file {path}: {err.strerror}") from None
            if not text:
                raise CliError(f"--token-file {path} is empty")
            return text
        return os.environ.get("MIRROR_TOKEN") or None

    def tls(self) -> TlsArg:
        a = self.args
        ca, cert, key = (getattr(a, n, None) for n in ("ca", "cert", "key"))
        if not (getattr(a, "tls", False) or ca or cert or key):
            return False
        if bool(cert) != bool(key):
            raise CliError("--cert and --key go together (a client certificate needs its key)")
        try:
            return TlsOptions.from_files(
                ca, cert, key, server_name=getattr(a, "tls_server_name", None) or ""
            )
        except OSError as err:
            raise CliError(f"cannot read {err.filename}: {err.strerror}") from None

    @cached_property
    def client(self) -> Client:
        timeout = getattr(self.args, "timeout", None)
        return Client(self.address, tls=self.tls(), token=self.token(), timeout=timeout,
                      rate_limit_wait=RATE_LIMIT_WAIT)

    def channel(self) -> grpc.Channel:
        return self.client.channel

    def close(self) -> None:
        if "client" in self.__dict__:
            self.client.close()
