"""Channel options shared by the sync and asyncio clients: TLS material and the bearer token."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import grpc
from grpc import aio

from mirror.v1 import gateway_pb2_grpc, policy_pb2_grpc, scan_pb2_grpc, transfer_pb2_grpc

DEFAULT_ADDRESS = "127.0.0.1:50051"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

C = TypeVar("C", grpc.Channel, aio.Channel)

_STUBS: dict[str, Callable[[Any], Any]] = {
    "policies": policy_pb2_grpc.PolicyServiceStub,
    "transfers": transfer_pb2_grpc.TransferServiceStub,
    "gateway": gateway_pb2_grpc.GatewayServiceStub,
    "scanner": scan_pb2_grpc.ScanServiceStub,
}

_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]


def _pem(value: str | bytes | None) -> bytes | None:
    if value is None or value == b"" or value == "":
        return None
    return value.encode() if isinstance(value, str) else value


@dataclass(frozen=True)
class TlsOptions:
    """TLS for the connection: a private CA, and a client certificate + key for mTLS.

    Values are PEM text (str or bytes). `server_name` overrides the name checked against the
    server certificate (useful when connecting by IP to a certificate issued for a host name).
    """

    ca_pem: str | bytes | None = None
    cert_pem: str | bytes | None = None
    key_pem: str | bytes | None = None
    server_name: str = ""

    @classmethod
    def from_files(
        cls, ca: str | os.PathLike[str] | None = None, cert: str | os.PathLike[str] | None = None,
        key: str | os.PathLike[str] | None = None, server_name: str = "",
    ) -> TlsOptions:
        """Read the PEM files that are given (None skips one)."""

        def read(p: str | os.PathLike[str] | None) -> bytes | None:
            return Path(p).read_bytes() if p else None

        return cls(read(ca), read(cert), read(key), server_name)

    def credentials(self) -> grpc.ChannelCredentials:
        """The gRPC channel credentials: the CA (the system's roots when none is given) and,
        for mTLS, the client certificate and key. ValueError when only one of those two is
        given."""
        if (self.cert_pem is None) != (self.key_pem is None):
            raise ValueError("a client certificate needs its key (give both cert_pem and key_pem)")
        return grpc.ssl_channel_credentials(
            root_certificates=_pem(self.ca_pem),
            private_key=_pem(self.key_pem),
            certificate_chain=_pem(self.cert_pem),
        )

    def options(self) -> list[tuple[str, object]]:
        """Channel arguments for these options: the `server_name` override, if any."""
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


TlsArg = bool | TlsOptions | None


def _resolve_tls(tls: TlsArg) -> TlsOptions | None:
    if tls is True:
        return TlsOptions()
    if tls is False or tls is None:
        return None
    return tls


def sync_channel(address: str, tls: TlsArg = False) -> grpc.Channel:
    """A blocking-API channel to `address` (HOST:PORT)."""
    opts = _resolve_tls(tls)
    if opts is None:
        return grpc.insecure_channel(address, options=_OPTIONS)
    return grpc.secure_channel(address, opts.credentials(), options=_OPTIONS + opts.options())


def aio_channel(address: str, tls: TlsArg = False) -> aio.Channel:
    """An asyncio channel to `address` (HOST:PORT)."""
    opts = _resolve_tls(tls)
    if opts is None:
        return aio.insecure_channel(address, options=_OPTIONS)
    return aio.secure_channel(address, opts.credentials(), options=_OPTIONS + opts.options())


def auth_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """The call metadata carrying a bearer token (empty without one)."""
    if not token:
        return ()
    if any(c in token for c in "\r\n"):
        raise ValueError("the token contains a line break; check the token file")
    return (("authorization", f"Bearer {token}"),)


class ChannelPool(Generic[C]):
    """A client's channels: one per distinct address, so services sharing one share a channel.

    `addresses` gives a service ("policies", "transfers", "gateway", "scanner") its own address;
    the others use `address`. `open_channel` is `sync_channel` or `aio_channel` with the TLS bound.
    """

    def __init__(
        self, address: str, addresses: Mapping[str, str] | None, open_channel: Callable[[str], C]
    ) -> None:
        self._address = address
        self._addresses = dict(addresses or {})
        self._open = open_channel
        self._by_address: dict[str, C] = {}

    def channel(self, service: str) -> C:
        """The channel to `service`'s address, opened on first use and shared with every
        service at the same address."""
        addr = self._addresses.get(service, self._address)
        if addr not in self._by_address:
            self._by_address[addr] = self._open(addr)
        return self._by_address[addr]

    def stub(self, service: str) -> Any:
        """The generated stub for `service`, on that service's channel."""
        return _STUBS[service](self.channel(service))

    def opened(self) -> list[C]:
        """The channels opened so far (the client closes them)."""
        return list(self._by_address.values())
