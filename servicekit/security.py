"""Command line options and server wiring for TLS, mTLS and bearer tokens.

    parser = base_parser(...)
    add_security_arguments(parser)
    args = parser.parse_args()
    sec = ServerSecurity.from_args(args)
    await start_server(servicers, args.grpc_listen, tls=sec.tls, interceptors=sec.interceptors)

A service that calls others (`--*-address`) also takes add_peer_arguments (--peer-ca,
--peer-cert/--peer-key) and dials them with `sec.channel(address)`: TLS (mutual with a client
certificate) when a peer CA is given, and the first admin token on every call.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

from servicekit.auth import (
    AuthInterceptor,
    Token,
    TokenAuthenticator,
    TokenFileError,
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
        help="bearer tokens, one 'admin:TOKEN' or 'read:TOKEN' per line ('#' comments); a "
        "file holding none is a startup error",
    )


def server_tokens(tokens_file: str | None, environ: Mapping[str, str]) -> list[Token]:
    """The tokens of `tokens_file` and of MIRROR_ADMIN_TOKEN / MIRROR_READ_TOKEN.

    A tokens file that holds no token (empty, only comments) is refused, TokenFileError: it
    is a secret that was not filled in (an empty mount, a template), and serving without
    tokens then would leave the API open to anyone who reaches the port. Without the file, no
    tokens is the documented loopback-only mode (warn_if_exposed).
    """
    if not tokens_file:
        return load_tokens(None, environ)
    from_file = load_tokens(tokens_file, {})
    if not from_file:
        raise TokenFileError(
            f"{tokens_file} holds no tokens: write one 'admin:TOKEN' line (16 characters or "
            "more; 'read:TOKEN' for read-only callers), or drop --tokens-file to serve "
            "without tokens on a loopback address only"
        )
    return from_file + load_tokens(None, environ)


def add_peer_arguments(parser: argparse.ArgumentParser) -> None:
    """--peer-ca, --peer-cert/--peer-key, --peer-server-name: TLS of outbound channels."""
    g = parser.add_argument_group(
        "outbound TLS",
        "How this service dials the other services (every --*-address): TLS when --peer-ca "
        "is given, mutual TLS with --peer-cert/--peer-key. Calls carry the first admin token "
        "of --tokens-file / MIRROR_ADMIN_TOKEN.",
    )
    g.add_argument("--peer-ca", metavar="PEM", help="CA of the other services' certificates")
    g.add_argument("--peer-cert", metavar="PEM", help="client certificate shown to them (mTLS)")
    g.add_argument("--peer-key", metavar="PEM", help="private key of --peer-cert")
    g.add_argument(
        "--peer-server-name", metavar="NAME", default="",
        help="name to verify in their certificates instead of the address's host",
    )


@dataclass(frozen=True)
class PeerTls:
    """TLS material for channels to other services (PEM bytes)."""

    ca_pem: bytes
    cert_pem: bytes | None = None
    key_pem: bytes | None = None
    server_name: str = ""

    @classmethod
    def from_files(
        cls, ca: str | None, cert: str | None = None, key: str | None = None,
        server_name: str = "",
    ) -> PeerTls | None:
        """None without a CA; ValueError when the options do not fit together."""
        if bool(cert) != bool(key):
            raise ValueError("--peer-cert and --peer-key go together")
        if not ca:
            if cert or server_name:
                raise ValueError("--peer-cert/--peer-server-name need --peer-ca")
            return None
        return cls(
            ca_pem=Path(ca).read_bytes(),
            cert_pem=Path(cert).read_bytes() if cert else None,
            key_pem=Path(key).read_bytes() if key else None,
            server_name=server_name,
        )

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_pem,
            private_key=self.key_pem,
            certificate_chain=self.cert_pem,
        )

    def options(self) -> list[tuple[str, str]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


@dataclass
class ServerSecurity:
    """What start_server needs: the interceptors (request log, auth) and the TLS config."""

    tls: TlsConfig | None = None
    tokens: list[Token] = field(default_factory=list)
    interceptors: list[aio.ServerInterceptor] = field(default_factory=list)
    peer: PeerTls | None = None

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
        peer_ca: str | None = None,
        peer_cert: str | None = None,
        peer_key: str | None = None,
        peer_server_name: str = "",
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
        tokens = server_tokens(tokens_file, os.environ if environ is None else environ)
        interceptors: list[aio.ServerInterceptor] = [RequestLogInterceptor()]
        if tokens:
            interceptors.append(AuthInterceptor(TokenAuthenticator(tokens)))
        peer = PeerTls.from_files(peer_ca, peer_cert, peer_key, peer_server_name)
        return cls(tls=tls, tokens=tokens, interceptors=interceptors, peer=peer)

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
            peer_ca=getattr(args, "peer_ca", None),
            peer_cert=getattr(args, "peer_cert", None),
            peer_key=getattr(args, "peer_key", None),
            peer_server_name=getattr(args, "peer_server_name", "") or "",
        )

    def channel(
        self, address: str, options: Sequence[tuple[str, Any]] = ()
    ) -> aio.Channel:
        """A channel to another service: TLS with the peer options (plaintext without), and
        the first admin token on every call when tokens are on; `options`: channel args."""
        interceptors = outbound_interceptors(self.tokens) or None
        if self.peer is None:
            return aio.insecure_channel(address, options=list(options), interceptors=interceptors)
        return aio.secure_channel(
            address, self.peer.credentials(), options=[*self.peer.options(), *options],
            interceptors=interceptors,
        )

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
