"""Registry authentication: challenge parsing, Basic, and Bearer tokens with a cache.

Tokens are cached per (realm, service, scope set) until shortly before they expire. Neither
credentials nor tokens are ever logged or put into error messages.

Credentials are bound to the registry they were given for: the transport sends Authorization
only to the registry's own origin (scheme, host, port) and learns challenges only from 401s
that origin sent; the password goes to a token realm the registry names only when that realm
is https or on the registry's own host (else the token is asked for anonymously).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from registry_client.bodies import read_limited
from registry_client.config import RegistryConfig
from registry_client.errors import AuthenticationError, ConnectError, RegistryError, error_for
from registry_client.excerpt import strip_userinfo
from servicekit.retry import Backoff, retryable_status

log = logging.getLogger(__name__)

_PARAM = re.compile(
    r"""\s*([A-Za-z0-9!#$%&'*+.^_`|~-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,]*)\s*,?""", re.S
)
_SCHEME = re.compile(r"\s*,?\s*([A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]*)(?=\s|$|,)")

DEFAULT_TOKEN_LIFETIME = 60
_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin_of(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a URL, default ports filled in, host lower case."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port or _DEFAULT_PORTS.get(scheme, 0)


def realm_may_get_credentials(realm: str, registry_url: str) -> bool:
    """A token realm gets the password only over https or on the registry's own host."""
    scheme, host, _ = origin_of(realm)
    return scheme == "https" or (scheme == "http" and host == origin_of(registry_url)[1])


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lower case: "basic" or "bearer"
    params: dict[str, str] = field(default_factory=dict)

    @property
    def realm(self) -> str:
        return self.params.get("realm", "")

    @property
    def service(self) -> str:
        return self.params.get("service", "")

    @property
    def scopes(self) -> list[str]:
        # Several scopes may share one value separated by spaces (a mount asks for two).
        return [s for s in self.params.get("scope", "").split(" ") if s]

    @property
    def error(self) -> str:
        return self.params.get("error", "")


def parse_www_authenticate(header: str) -> list[Challenge]:
    """All challenges in a WWW-Authenticate value, e.g. `Bearer realm="..",scope="a b"`.

    Quoted values may hold commas, spaces, colons (`host:port`) and escaped quotes.
    """
    out: list[Challenge] = []
    pos = 0
    while pos < len(header):
        m = _SCHEME.match(header, pos)
        if not m:
            # A token68 or junk: skip to the next comma so a following scheme is still read.
            nxt = header.find(",", pos)
            if nxt < 0:
                break
            pos = nxt + 1
            continue
        scheme = m.group(1).lower()
        pos = m.end()
        params: dict[str, str] = {}
        while pos < len(header):
            pm = _PARAM.match(header, pos)
            if not pm:
                break
            value = pm.group(2)
            if value.startswith('"'):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            params[pm.group(1).lower()] = value
            pos = pm.end()
        out.append(Challenge(scheme, params))
    return out


def split_scope(scope: str) -> tuple[str, str, list[str]]:
    """`repository:host:5000/app:pull,push` -> ("repository", "host:5000/app", ["pull","push"])."""
    kind, _, rest = scope.partition(":")
    name, _, actions = rest.rpartition(":")
    return kind, name, [a for a in actions.split(",") if a]


def merge_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """Deduplicate scopes, uniting the actions asked for the same resource; sorted."""
    merged: dict[tuple[str, str], list[str]] = {}
    for scope in scopes:
        for one in scope.split(" "):
            if not one:
                continue
            kind, name, actions = split_scope(one)
            acts = merged.setdefault((kind, name), [])
            acts.extend(a for a in actions if a not in acts)
    return tuple(
        sorted(f"{kind}:{name}:{','.join(sorted(acts))}" for (kind, name), acts in merged.items())
    )


@dataclass
class _Token:
    value: str
    expires_at: float


class Authenticator:
    """Knows the registry's auth scheme (learnt from its first 401) and produces headers."""

    def __init__(self, cfg: RegistryConfig) -> None:
        self.cfg = cfg
        self.challenge: Challenge | None = None
        self._tokens: dict[tuple[str, str, tuple[str, ...]], _Token] = {}
        self._no_post: set[str] = set()
        self._locks: dict[tuple[str, str, tuple[str, ...]], asyncio.Lock] = {}
        self._backoff = Backoff(cfg.backoff_base, cfg.backoff_cap)
        self.origin = origin_of(cfg.base_url)
        self.token_fetches = 0  # for tests and metrics

    def owns(self, url: str) -> bool:
        """Whether `url` is on the registry's own origin (the only one that gets credentials)."""
        return origin_of(url) == self.origin

    @property
    def has_credentials(self) -> bool:
        return bool(self.cfg.username or self.cfg.password)

    def _basic(self) -> str:
        raw = f"{self.cfg.username}:{self.cfg.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    def _key(self, scopes: Iterable[str]) -> tuple[str, str, tuple[str, ...]]:
        assert self.challenge is not None
        return (self.challenge.realm, self.challenge.service, merge_scopes(scopes))

    async def header(self, session: aiohttp.ClientSession, scopes: Iterable[str]) -> str | None:
        """The Authorization header to send up front (None until a challenge was seen)."""
        ch = self.challenge
        if ch is None:
            return None
        if ch.scheme == "basic":
            return self._basic() if self.has_credentials else None
        if ch.scheme == "bearer":
            return "Bearer " + await self._token(session, list(scopes))
        return None

    def invalidate(self, scopes: Iterable[str]) -> None:
        if self.challenge is not None and self.challenge.scheme == "bearer":
            self._tokens.pop(self._key(scopes), None)

    def learn(self, www_authenticate: str) -> Challenge:
        """Record the registry's challenge from a 401; raise when it is unusable."""
        challenges = parse_www_authenticate(www_authenticate or "")
        for ch in challenges:
            if ch.scheme == "bearer" and ch.realm:
                if origin_of(ch.realm)[0] not in ("http", "https"):
                    raise AuthenticationError(
                        401, "UNAUTHORIZED", "the registry names a token realm that is not http(s)"
                    )
                self.challenge = Challenge("bearer", ch.params)
                return ch
        for ch in challenges:
            if ch.scheme == "basic":
                if not self.has_credentials:
                    raise AuthenticationError(401, "UNAUTHORIZED", "the registry needs credentials")
                self.challenge = ch
                return ch
        raise AuthenticationError(401, "UNAUTHORIZED", "unsupported authentication challenge")

    async def _token(self, session: aiohttp.ClientSession, scopes: list[str]) -> str:
        key = self._key(scopes)
        tok = self._tokens.get(key)
        if tok is not None and tok.expires_at > time.monotonic():
            return tok.value
        # One fetch per scope set even when many requests need it at once.
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            tok = self._tokens.get(key)
            if tok is not None and tok.expires_at > time.monotonic():
                return tok.value
            value, lifetime = await self._fetch(session, key[0], key[1], list(key[2]))
            # Renew a little before expiry so a request never carries a token about to lapse.
            margin = min(30.0, max(2.0, lifetime * 0.1))
            self._tokens[key] = _Token(value, time.monotonic() + lifetime - margin)
            return value

    async def _fetch(
        self, session: aiohttp.ClientSession, realm: str, service: str, scopes: list[str]
    ) -> tuple[str, float]:
        self.token_fetches += 1
        log.debug(
            "fetching token from %s for %s", strip_userinfo(realm), " ".join(scopes) or "no scope"
        )
        send_credentials = self.has_credentials and realm_may_get_credentials(
            realm, self.cfg.base_url
        )
        if self.has_credentials and not send_credentials:
            log.warning(
                "token realm %s is plain http on another host than %s: asking without credentials",
                strip_userinfo(realm),
                self.cfg.base_url,
            )
        if send_credentials and realm not in self._no_post:
            form = {
                "grant_type": "password",
                "username": self.cfg.username,
                "password": self.cfg.password,
                "service": service,
                "client_id": "image-mirror",
                "access_type": "offline",
            }
            if scopes:
                form["scope"] = " ".join(scopes)
            # Never follow a redirect with the password in the body.
            status, doc, body = await self._call(
                session, "POST", realm, data=form, allow_redirects=False
            )
            if status == 200:
                return _parse_token(doc)
            if status in (400, 404, 405):  # no OAuth2 form here: use the GET flow from now on
                self._no_post.add(realm)
            else:
                raise _token_error(status, body)
        params: list[tuple[str, str]] = [("service", service)] if service else []
        params += [("scope", s) for s in scopes]
        # aiohttp drops Authorization on a redirect to another origin.
        headers = {"Authorization": self._basic()} if send_credentials else {}
        status, doc, body = await self._call(session, "GET", realm, params=params, headers=headers)
        if status != 200:
            err = _token_error(status, body)
            if self.has_credentials and not send_credentials and status in (401, 403):
                err = AuthenticationError(
                    status,
                    "UNAUTHORIZED",
                    f"the token realm {strip_userinfo(realm)} is plain http on another host than"
                    " the registry; credentials are not sent there (use https for the realm)",
                )
            raise err
        return _parse_token(doc)

    async def _call(
        self, session: aiohttp.ClientSession, method: str, url: str, **kw: Any
    ) -> tuple[int, Any, bytes]:
        attempts = max(1, self.cfg.max_attempts)
        for attempt in range(attempts):
            try:
                async with session.request(method, url, **kw) as resp:
                    body = await read_limited(resp, 1 << 20)
                    if retryable_status(resp.status) and attempt + 1 < attempts:
                        await self._backoff.sleep(attempt)
                        continue
                    doc: Any = None
                    if resp.status == 200:
                        try:
                            doc = json.loads(body)
                        except ValueError as e:
                            raise RegistryError(200, "", "token server answered no JSON") from e
                    return resp.status, doc, body
            except (aiohttp.ClientConnectionError, TimeoutError) as e:
                if attempt + 1 >= attempts:
                    raise ConnectError(
                        0, "", f"token server unreachable: {type(e).__name__}"
                    ) from e
                await self._backoff.sleep(attempt)
        raise ConnectError(0, "", "token server unreachable")


def _parse_token(doc: Any) -> tuple[str, float]:
    if not isinstance(doc, dict):
        raise RegistryError(200, "", "token server answered no JSON object")
    value = doc.get("token") or doc.get("access_token")
    if not isinstance(value, str) or not value:
        raise RegistryError(200, "", "token server answered without a token")
    try:
        lifetime = float(doc.get("expires_in") or DEFAULT_TOKEN_LIFETIME)
    except (TypeError, ValueError):
        lifetime = DEFAULT_TOKEN_LIFETIME
    return value, max(lifetime, 1.0)


def _token_error(status: int, body: bytes) -> RegistryError:
    if status in (401, 403):
        return AuthenticationError(status, "UNAUTHORIZED", "token server refused the credentials")
    return error_for(status, body, "token request failed")
