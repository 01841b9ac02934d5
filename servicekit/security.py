"""Command line options and server wiring for TLS, mTLS and bearer tokens.

    parser = base_parser(...)
    add_security_arguments(parser)
    args = parser.parse_args()
    sec = ServerSecurity.from_args(args)
    await start_server(servicers, args.grpc_listen, tls=sec.tls, interceptors=sec.interceptors)
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from grpc import aio

from servicekit.auth import (
    AuthInterceptor,
    Token,
    TokenAuthenticator,
    load_tokens,
    outbound_interceptors,
)
from servicekit.request_log import RequestLogInterceptor
from servicekit.server import TlsConfig

log = logging.getLogger("servicekit.security")


def add_security_arguments(parser: argparse.ArgumentParser) -> None:
    """--tls-cert/--tls-key/--tls-client-ca and --tokens-file."""
    g = parser.add_argument_group(
        "security",
        "TLS for the gRPC port (a client CA turns on mutual TLS) and bearer tokens. Without "
        "tokens (file or MIRROR_ADMIN_TOKEN / MIRROR_READ_TOKEN) every call is allowed: "
        "keep the server on a loopback address then.",
    )
    g.add_argument("--tls-cert", metavar="PEM", help="server certificate (chain) file")
    g.add_argument("--tls-key", metavar="PEM", help="server private key file")
    g.add_argument(
        "--tls-client-ca", metavar="PEM", help="CA of client certificates: requires mTLS"
    )
    g.add_argument(
        "--tokens-file", metavar="FILE",
        help="bearer tokens, one 'admin:TOKEN' or 'read:TOKEN' per line",
    )


@dataclass
class ServerSecurity:
    """What start_server needs: the interceptors (request log, auth) and the TLS config."""

    tls: TlsConfig | None = None
    tokens: list[Token] = field(default_factory=list)
    interceptors: list[aio.ServerInterceptor] = field(default_factory=list)

    @property
    def auth_enabled(self) -> bool:
        return bool(self.tokens)

    @classmethod
    def build(
        cls,
        *,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        tls_client_ca: str | None = None,
        tokens_file: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> ServerSecurity:
        """Read certificates and tokens; ValueError with a clear message on bad input."""
        if bool(tls_cert) != bool(tls_key):
            raise ValueError("--tls-cert and --tls-key go together")
        if tls_client_ca and not tls_cert:
            raise ValueError("--tls-client-ca (mTLS) needs --tls-cert and --tls-key")
        tls = None
        if tls_cert and tls_key:
            tls = TlsConfig(
                cert_pem=Path(tls_cert).read_bytes(),
                key_pem=Path(tls_key).read_bytes(),
                client_ca_pem=Path(tls_client_ca).read_bytes() if tls_client_ca else None,
            )
        tokens = load_tokens(tokens_file, os.environ if environ is None else environ)
        interceptors: list[aio.ServerInterceptor] = [RequestLogInterceptor()]
        if tokens:
            interceptors.append(AuthInterceptor(TokenAuthenticator(tokens)))
        return cls(tls=tls, tokens=tokens, interceptors=interceptors)

    @classmethod
    def from_args(
        cls, args: argparse.Namespace, environ: Mapping[str, str] | None = None
    ) -> ServerSecurity:
        """From the options add_security_arguments defined (and the token env variables)."""
        return cls.build(
            tls_cert=getattr(args, "tls_cert", None),
            tls_key=getattr(args, "tls_key", None),
            tls_client_ca=getattr(args, "tls_client_ca", None),
            tokens_file=getattr(args, "tokens_file", None),
            environ=environ,
        )

    def channel(self, address: str) -> aio.Channel:
        """A plaintext channel to another service, carrying the admin token when tokens are on."""
        interceptors = outbound_interceptors(self.tokens)
        return aio.insecure_channel(address, interceptors=interceptors or None)

    def warn_if_exposed(self, listen: str) -> None:
        """Log a warning when a non-loopback address is served without tokens."""
        if self.auth_enabled:
            return
        host = listen.rsplit(":", 1)[0].strip("[]")
        if not _is_loopback(host):
            log.warning(
                "listening on %s without bearer tokens: anyone who reaches it can change "
                "policies and endpoints (set --tokens-file or MIRROR_ADMIN_TOKEN)", listen
            )


def _is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
