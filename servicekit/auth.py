"""Bearer-token authentication and admin/read authorization for gRPC calls.

Tokens come from a file (`role:token` per line) or MIRROR_ADMIN_TOKEN / MIRROR_READ_TOKEN.
Health and reflection stay open; other calls need a valid token (UNAUTHENTICATED) and, unless
they only read, an admin one (PERMISSION_DENIED).
"""

from __future__ import annotations

import enum
import hmac
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

from servicekit.handlers import rewrap

log = logging.getLogger("servicekit.auth")

OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

# Read-only calls whose names do not start with List/Get/Watch.
_READ_METHODS = frozenset({"Evaluate", "EvaluateRule", "ValidateRule"})
_READ_PREFIXES = ("List", "Get", "Watch")


class Role(enum.IntEnum):
    READ = 1
    ADMIN = 2


@dataclass(frozen=True)
class Token:
    role: Role
    value: bytes


class TokenFileError(ValueError):
    """A tokens file that cannot be used; the message names the line (never the token)."""


def parse_tokens(text: str, source: str = "tokens file") -> list[Token]:
    """Parse `role:token` lines (roles admin/read); blank lines and # comments are skipped."""
    out: list[Token] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        role_name, sep, value = line.partition(":")
        role_name = role_name.strip().lower()
        value = value.strip()
        if not sep or role_name not in ("admin", "read"):
            raise TokenFileError(
                f"{source} line {number}: expected 'admin:TOKEN' or 'read:TOKEN'"
            )
        if len(value) < 16:
            raise TokenFileError(f"{source} line {number}: token shorter than 16 characters")
        out.append(Token(Role[role_name.upper()], value.encode()))
    return out


def load_tokens(
    tokens_file: str | os.PathLike[str] | None, environ: Mapping[str, str] | None = None
) -> list[Token]:
    """Tokens from the file (if given) plus MIRROR_ADMIN_TOKEN / MIRROR_READ_TOKEN."""
    env = os.environ if environ is None else environ
    tokens: list[Token] = []
    if tokens_file:
        path = Path(tokens_file)
        tokens += parse_tokens(path.read_text(), source=str(path))
    for var, role in (("MIRROR_ADMIN_TOKEN", Role.ADMIN), ("MIRROR_READ_TOKEN", Role.READ)):
        value = env.get(var, "").strip()
        if value:
            if len(value) < 16:
                raise TokenFileError(f"{var}: token shorter than 16 characters")
            tokens.append(Token(role, value.encode()))
    return tokens


def required_role(method: str) -> Role | None:
    """The role a full method name (`/pkg.Service/Method`) needs; None when open to all."""
    if method.startswith(OPEN_PREFIXES):
        return None
    name = method.rsplit("/", 1)[-1]
    if name in _READ_METHODS or name.startswith(_READ_PREFIXES):
        return Role.READ
    return Role.ADMIN


class TokenAuthenticator:
    """Finds the role of a presented token by comparing it with every known token."""

    def __init__(self, tokens: Iterable[Token]) -> None:
        self._tokens = list(tokens)

    def __bool__(self) -> bool:
        return bool(self._tokens)

    def role_of(self, presented: str) -> Role | None:
        """The highest role whose token equals `presented` (constant time per token)."""
        given = presented.encode()
        best: Role | None = None
        # No early exit: the time spent does not depend on which token matched.
        for token in self._tokens:
            if hmac.compare_digest(token.value, given) and (best is None or token.role > best):
                best = token.role
        return best


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The token of an `authorization: Bearer ...` header, or None."""
    for key, value in metadata or ():
        if key.lower() != "authorization":
            continue
        text = value.decode(errors="replace") if isinstance(value, bytes) else value
        scheme, _, token = text.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return None
    return None


def _rejecting(
    handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str
) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` that fails with `code` without running it."""

    async def unary(request: Any, context: aio.ServicerContext) -> Any:
        await context.abort(code, message)

    async def stream(request: Any, context: aio.ServicerContext) -> Any:
        await context.abort(code, message)
        yield  # pragma: no cover - makes this an async generator

    return rewrap(handler, lambda _: unary, lambda _: stream)


class AuthInterceptor(aio.ServerInterceptor):
    """UNAUTHENTICATED without a valid bearer token; PERMISSION_DENIED for read tokens on writes."""

    def __init__(self, authenticator: TokenAuthenticator) -> None:
        self._auth = authenticator

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        needed = required_role(method)
        if handler is None or needed is None:
            return handler
        token = bearer_token(handler_call_details.invocation_metadata)
        if token is None:
            log.info("refused %s: no bearer token", method)
            return _rejecting(
                handler,
                grpc.StatusCode.UNAUTHENTICATED,
                "missing bearer token: pass --token/--token-file (or MIRROR_TOKEN) to mirrorctl, "
                "or the metadata 'authorization: Bearer TOKEN'",
            )
        role = self._auth.role_of(token)
        if role is None:
            log.info("refused %s: unknown token", method)
            return _rejecting(
                handler, grpc.StatusCode.UNAUTHENTICATED, "invalid bearer token"
            )
        if role < needed:
            log.info("refused %s: read-only token", method)
            return _rejecting(
                handler,
                grpc.StatusCode.PERMISSION_DENIED,
                f"{method.rsplit('/', 1)[-1]} changes state and needs an admin token; "
                "this token is read-only",
            )
        return handler


class _OutboundBearer:
    """Adds `authorization: Bearer TOKEN` to calls a service makes to another service."""

    def __init__(self, token: str) -> None:
        self._md = ("authorization", f"Bearer {token}")

    def _details(self, d: aio.ClientCallDetails) -> aio.ClientCallDetails:
        md = aio.Metadata(*(d.metadata or ()))
        md.add(*self._md)
        return aio.ClientCallDetails(d.method, d.timeout, md, d.credentials, d.wait_for_ready)

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self._details(details), request)

    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], details: aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self._details(details), request)


class _OutboundBearerUnary(_OutboundBearer, aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    pass


class _OutboundBearerStream(_OutboundBearer, aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    pass


def outbound_interceptors(tokens: Iterable[Token]) -> list[aio.ClientInterceptor]:
    """Client interceptors carrying the first admin token (none when there is no admin token).

    One interceptor per call kind: grpc.aio files an interceptor under its first matching kind.
    """
    admin = next((t for t in tokens if t.role == Role.ADMIN), None)
    if admin is None:
        return []
    token = admin.value.decode()
    return [_OutboundBearerUnary(token), _OutboundBearerStream(token)]
