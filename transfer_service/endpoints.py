"""Endpoints: registries the service pulls from and pushes to, with encrypted credentials.

`EndpointStore` validates and persists endpoints (the secret encrypted with `SecretBox`) and
builds registry clients for them. Other packages that must pull (the scanner, the gateway)
get an `EndpointResolver`, never the secret itself; see docs/INTERFACES.md.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import json
import math
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

from cryptography import x509

from registry_client import RegistryClient, RegistryConfig
from registry_client.excerpt import strip_userinfo
from registry_client.pool import POOL
from servicekit.db import INTEGRITY_ERRORS, Database, Row, Tx
from servicekit.errors import already_exists, invalid_argument, not_found
from transfer_service.secrets import SecretBox

NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
# host or host:port, as a registry names itself in push events.
_HOST_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
ALIAS_RE = re.compile(rf"(?:{_HOST_LABEL}(?:\.{_HOST_LABEL})*|\[[0-9A-Fa-f:.]+\])(?::\d{{1,5}})?")
MAX_CONCURRENCY = 256
MAX_ALIASES = 32

# Fields a client may set; the rest (times, has_secret) are output only.
WRITABLE_FIELDS = (
    "url",
    "username",
    "secret",
    "ca_pem",
    "insecure_skip_verify",
    "max_concurrency",
    "requests_per_second",
    "scan_on_push",
    "aliases",
    "webhook_secret",
)
# Webhook secrets travel in an `Authorization: Bearer` header: printable ASCII, no spaces.
WEBHOOK_SECRET_RE = re.compile(r"[\x21-\x7e]{16,1024}")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_LOOPBACK = frozenset({"localhost", "127.0.0.1", "[::1]"})


@dataclass(frozen=True)
class EndpointRecord:
    """One endpoint as stored; `secret` is the decrypted secret and never appears in repr()."""

    name: str
    url: str
    username: str = ""
    secret: str = field(default="", repr=False)
    ca_pem: str = ""
    insecure_skip_verify: bool = False
    max_concurrency: int = 0
    requests_per_second: float = 0.0
    scan_on_push: bool = False
    aliases: tuple[str, ...] = ()
    webhook_secret: str = field(default="", repr=False)
    create_time: float = 0.0
    update_time: float = 0.0

    @property
    def has_secret(self) -> bool:
        return bool(self.secret)

    @property
    def has_webhook_secret(self) -> bool:
        return bool(self.webhook_secret)

    def hosts(self) -> list[str]:
        """host[:port] of the URL followed by the aliases (for matching push events)."""
        return [urlsplit(self.url).netloc, *self.aliases]


def url_origin(url: str) -> str:
    """scheme://host:port of an endpoint URL, lowercased, the port made explicit ('' if bad).

    A secret is bound to this origin: it is only ever sent to the registry it was given for.
    """
    try:
        parts = urlsplit(url.strip())
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme.lower(), 0)
    except ValueError:
        return ""
    host = (parts.hostname or "").lower().rstrip(".")
    if not host:
        return ""
    shown = f"[{host}]" if ":" in host else host
    return f"{parts.scheme.lower()}://{shown}:{port}"


def _host_port(origin_or_alias: str, default_port: int | None) -> str:
    """host:port of an origin or an alias; an alias without a port gets `default_port`."""
    rest = origin_or_alias.split("://", 1)[-1].lower()
    m = re.fullmatch(r"(\[[^\]]+\]|[^:]+)(?::(\d+))?", rest)
    if m is None:
        return rest
    host, port = m.group(1).rstrip("."), m.group(2)
    # This machine's loopback names reach one and the same local registry.
    host = "localhost" if host in _LOOPBACK else host
    if port is None:
        if default_port is None:
            return host
        port = str(default_port)
    return f"{host}:{int(port)}"


def _alias_taken(alias: str, other: EndpointRecord) -> str | None:
    """How `other` already answers to the host[:port] `alias` ('url' or 'alias NAME')."""
    origin = url_origin(other.url)
    if origin:
        default = _DEFAULT_PORTS.get(origin.split("://", 1)[0])
        if _host_port(alias, default) == _host_port(origin, None):
            return "url"
    for theirs in other.aliases:
        if _host_port(alias, None) == _host_port(theirs, None):
            return f"alias {theirs}"
    return None


def same_registry(url: str, other: EndpointRecord) -> str | None:
    """How `other` already names the registry at `url` ('url' or 'alias NAME'), else None.

    Compared on host:port (one port serves one registry, whatever the scheme).
    """
    origin = url_origin(url)
    if not origin:
        return None
    scheme = origin.split("://", 1)[0]
    mine = _host_port(origin, None)
    if url_origin(other.url) and _host_port(url_origin(other.url), None) == mine:
        return "url"
    for alias in other.aliases:
        if _host_port(alias, _DEFAULT_PORTS.get(scheme)) == mine:
            return f"alias {alias}"
    return None


def validate_endpoint(ep: EndpointRecord) -> list[tuple[str, str]]:
    """Field violations (field, description) of an endpoint; empty when it is valid."""
    v: list[tuple[str, str]] = []
    if not ep.name:
        v.append(("endpoint.name", "required"))
    elif not NAME_RE.fullmatch(ep.name):
        v.append(
            (
                "endpoint.name",
                f"{ep.name!r} is not a valid name: 1-63 characters, lowercase letters, digits, "
                "'-' and '_', starting with a letter or digit",
            )
        )
    url_problem = _url_problem(ep.url)
    if url_problem:
        v.append(("endpoint.url", url_problem))
    if ep.secret and not ep.username:
        # Registries (Basic and token auth alike) need a user name beside the password/token.
        v.append(("endpoint.username", "required when a secret is given"))
    if ep.webhook_secret and not WEBHOOK_SECRET_RE.fullmatch(ep.webhook_secret):
        # Never echo the value: it is a credential.
        v.append(
            (
                "endpoint.webhook_secret",
                "must be 16 to 1024 printable ASCII characters without spaces",
            )
        )
    if ep.ca_pem:
        ca_problem = _ca_problem(ep.ca_pem)
        if ca_problem:
            v.append(("endpoint.ca_pem", ca_problem))
    if not 0 <= ep.max_concurrency <= MAX_CONCURRENCY:
        v.append(("endpoint.max_concurrency", f"must be between 0 and {MAX_CONCURRENCY}"))
    if not math.isfinite(ep.requests_per_second) or ep.requests_per_second < 0:
        v.append(("endpoint.requests_per_second", "must be a finite number >= 0"))
    if len(ep.aliases) > MAX_ALIASES:
        v.append(("endpoint.aliases", f"at most {MAX_ALIASES} aliases"))
    seen: set[str] = set()
    for i, alias in enumerate(ep.aliases):
        if not ALIAS_RE.fullmatch(alias) or not _port_ok(alias):
            v.append((f"endpoint.aliases[{i}]", f"{alias!r} is not a host or host:port"))
        elif alias.lower() in seen:
            v.append((f"endpoint.aliases[{i}]", f"{alias!r} is listed twice"))
        seen.add(alias.lower())
    return v


def _url_problem(raw: str) -> str | None:
    if not raw:
        return "required, e.g. https://registry.example.com"
    # Every message below names the URL without its userinfo: a password typed into the URL
    # must not come back in an error (which read-only clients and logs may see).
    url = strip_userinfo(raw)
    if url != raw:
        # Credentials in the URL would be stored and shown in clear: use username/secret.
        return f"{url!r} must not contain credentials; use username and secret"
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError as exc:
        return f"{url!r} is not a valid URL: {exc}"
    if parts.scheme not in ("http", "https"):
        return f"{url!r}: the scheme must be http or https"
    if not parts.hostname:
        return f"{url!r} has no host"
    if port == 0:
        return f"{url!r}: port 0 is not valid"
    if parts.username or parts.password:
        # Credentials in the URL would be stored and shown in clear: use username/secret.
        return "must not contain credentials; use username and secret"
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return f"{url!r}: give only scheme, host and port (the registry API lives at /v2/)"
    host = parts.hostname
    if not _host_ok(host):
        return f"{url!r}: {host!r} is not a valid host name or address"
    return None


def _host_ok(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(re.fullmatch(rf"{_HOST_LABEL}(?:\.{_HOST_LABEL})*\.?", host))


def _port_ok(alias: str) -> bool:
    m = re.search(r":(\d+)$", alias)
    return m is None or 0 < int(m.group(1)) < 65536


def _ca_problem(pem: str) -> str | None:
    if "-----BEGIN CERTIFICATE-----" not in pem:
        return "not a PEM certificate (expected -----BEGIN CERTIFICATE-----)"
    try:
        certs = x509.load_pem_x509_certificates(pem.encode())
    except ValueError as exc:
        return f"not a valid PEM certificate: {exc}"
    if not certs:
        return "no certificate found in the PEM"
    return None


class EndpointStore:
    """Endpoints in SQLite; secrets encrypted with the service's key.

    A secret is bound to the origin (scheme://host:port) it was given for: an update that
    moves the URL to another origin without a new secret clears it, and a stored secret whose
    origin no longer matches the URL is never used (defence in depth; see docs/INTERFACES.md).
    """

    def __init__(
        self,
        db: Database,
        box: SecretBox,
        *,
        idle_timeout: float | None = None,
        retry_after_cap: float | None = None,
    ) -> None:
        """`idle_timeout`, `retry_after_cap`: the service's settings for every registry client
        it builds (None: RegistryConfig's defaults)."""
        self._db = db
        self._box = box
        self._idle_timeout = idle_timeout
        self._retry_after_cap = retry_after_cap
        # Transfer workers alive on this job table (the worker's lease renewals set it): an
        # endpoint's explicit limits are divided among them (docs/INTERFACES.md).
        self.live_workers = 1

    def __repr__(self) -> str:
        return f"EndpointStore({getattr(self._db, 'path', None) or 'postgresql'})"

    @property
    def db(self) -> Database:
        return self._db

    def check_key(self) -> None:
        """Raise SecretKeyError when the key cannot decrypt the stored secrets (wrong key)."""
        for column in ("secret_enc", "webhook_secret_enc"):
            row = self._db.query_one(
                f"SELECT {column} AS enc FROM endpoints WHERE {column} IS NOT NULL"
            )
            if row is not None:
                self._box.decrypt(bytes(row["enc"]))

    def create(self, ep: EndpointRecord, validate_only: bool = False) -> EndpointRecord:
        """Validate and store a new endpoint (only validate with `validate_only`):
        INVALID_ARGUMENT, ALREADY_EXISTS."""
        violations = validate_endpoint(ep)
        if violations:
            raise invalid_argument("the endpoint is not valid", violations)
        now = time.time()
        ep = replace(ep, aliases=tuple(ep.aliases), create_time=now, update_time=now)
        try:
            with self._db.transaction() as c:
                if c.execute("SELECT 1 FROM endpoints WHERE name = ?", (ep.name,)).fetchone():
                    raise already_exists(f"endpoint {ep.name!r} already exists")
                self._refuse_same_registry(c, ep)
                if validate_only:
                    return ep
                c.execute(
                    "INSERT INTO endpoints (name, url, username, secret_enc, ca_pem, "
                    "insecure_skip_verify, max_concurrency, requests_per_second, scan_on_push, "
                    "aliases, create_time, update_time, secret_origin, webhook_secret_enc) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    self._row_values(ep),
                )
        except INTEGRITY_ERRORS:
            raise already_exists(f"endpoint {ep.name!r} already exists") from None
        return ep

    def get(self, name: str) -> EndpointRecord:
        """The endpoint with its decrypted secret; NOT_FOUND when absent."""
        row = self._db.query_one("SELECT * FROM endpoints WHERE name = ?", (name,))
        if row is None:
            raise not_found(f"endpoint {name!r} not found")
        return self._from_row(row)

    def exists(self, name: str) -> bool:
        return self._db.query_one("SELECT 1 FROM endpoints WHERE name = ?", (name,)) is not None

    def list(self, limit: int, after: str = "") -> list[EndpointRecord]:
        """Up to `limit` endpoints by name, those after `after`."""
        rows = self._db.query(
            "SELECT * FROM endpoints WHERE name > ? ORDER BY name LIMIT ?", (after, limit)
        )
        return [self._from_row(r) for r in rows]

    def update(
        self, name: str, changes: dict[str, object], validate_only: bool = False
    ) -> EndpointRecord:
        """Apply `changes` (writable field -> new value) atomically; validate the result
        (and store nothing with `validate_only`).

        A URL that names another origin (scheme, host or port) clears the stored secret unless
        the same update gives a new one; the username stays.
        """
        unknown = set(changes) - set(WRITABLE_FIELDS)
        if unknown:
            raise invalid_argument(
                "cannot update these fields",
                [(f"update_mask.{f}", "not a writable field") for f in sorted(unknown)],
            )
        with self._db.transaction() as c:
            row = c.execute("SELECT * FROM endpoints WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise not_found(f"endpoint {name!r} not found")
            current = self._from_row(row)
            values = dict(changes)
            if "aliases" in values:
                values["aliases"] = tuple(values["aliases"])  # type: ignore[arg-type]
            updated = replace(current, **values, update_time=time.time())  # type: ignore[arg-type]
            moved = url_origin(updated.url) != url_origin(current.url)
            if moved and not changes.get("secret"):
                # The secret was given for the old registry: never send it to the new one.
                updated = replace(updated, secret="")
            violations = validate_endpoint(updated)
            if violations:
                raise invalid_argument("the endpoint is not valid", violations)
            if moved or updated.aliases != current.aliases:
                self._refuse_same_registry(c, updated)
            if validate_only:
                return updated
            c.execute(
                "UPDATE endpoints SET url=?, username=?, secret_enc=?, ca_pem=?, "
                "insecure_skip_verify=?, max_concurrency=?, requests_per_second=?, "
                "scan_on_push=?, aliases=?, update_time=?, secret_origin=?, "
                "webhook_secret_enc=? WHERE name=?",
                (
                    *self._row_values(updated)[1:10],
                    updated.update_time,
                    *self._row_values(updated)[12:14],
                    name,
                ),
            )
        if moved:
            # Other limit or credential changes replace the state at the next client_for.
            POOL.forget(RegistryConfig(url=current.url.rstrip("/")))
        return updated

    def delete(self, name: str) -> None:
        """Remove the endpoint and its registry's shared limits and tokens; NOT_FOUND."""
        row = self._db.query_one("SELECT url FROM endpoints WHERE name = ?", (name,))
        if self._db.execute("DELETE FROM endpoints WHERE name = ?", (name,)) == 0:
            raise not_found(f"endpoint {name!r} not found")
        if row is not None:
            POOL.forget(RegistryConfig(url=row["url"].rstrip("/")))

    def verify_webhook_secret(self, name: str, presented: str) -> tuple[bool, bool]:
        """(ok, has_webhook_secret) for a secret presented with a notification; NOT_FOUND."""
        stored = self.get(name).webhook_secret
        if not stored:
            return False, False
        # Constant time: the comparison must not tell how much of the secret was right.
        return hmac.compare_digest(stored.encode(), presented.encode()), True

    def config_for(self, name: str) -> RegistryConfig:
        """The registry client configuration of an endpoint, credentials decrypted.

        Clients built from it share the registry's limits, 429 pauses, quota window and
        tokens with every other client of it in this process (registry_client.pool): an
        endpoint's max_concurrency and requests_per_second hold across all its jobs, polls
        and scans. A changed URL, credential, CA or limit gives new shared state.

        Several transfer workers on one job table divide an endpoint's explicit limits among
        the live ones: each takes ceil(max_concurrency / workers) requests at once and
        requests_per_second / workers (the unset default of 8 at once is per worker).
        """
        ep = self.get(name)
        workers = max(1, self.live_workers)
        cfg = RegistryConfig(
            url=ep.url.rstrip("/"),
            username=ep.username,
            password=ep.secret,
            ca_pem=ep.ca_pem,
            insecure_skip_verify=ep.insecure_skip_verify,
            max_concurrency=math.ceil(ep.max_concurrency / workers) if ep.max_concurrency else 8,
            requests_per_second=ep.requests_per_second / workers,
            shared_limits=True,
        )
        if self._idle_timeout is not None:
            cfg = replace(cfg, idle_timeout=self._idle_timeout)
        if self._retry_after_cap is not None:
            cfg = replace(cfg, retry_after_cap=self._retry_after_cap)
        return cfg

    @contextlib.asynccontextmanager
    async def client_for(self, name: str) -> AsyncIterator[RegistryClient]:
        """`async with store.client_for(name) as rc`: a registry client for the endpoint, read
        on the database's threads (never on the event loop); leaving closes only the client's
        hold on the registry's shared state. NOT_FOUND when absent."""
        cfg = await self._db.run(self.config_for, name)
        async with RegistryClient(cfg) as rc:
            yield rc


    def _refuse_same_registry(self, c: Tx, ep: EndpointRecord) -> None:
        """ALREADY_EXISTS when another endpoint's URL or alias names the registry of `ep`."""
        for row in c.execute("SELECT * FROM endpoints WHERE name != ?", (ep.name,)).fetchall():
            other = self._from_row(row, decrypt=False)
            how = same_registry(ep.url, other)
            if how is not None:
                raise already_exists(
                    f"endpoint {other.name!r} already names the registry at "
                    f"{url_origin(ep.url)} ({how}); use {other.name!r}, or add other names "
                    f"of that registry to its aliases"
                )
            for alias in ep.aliases:
                # An event's host must place it at one endpoint only.
                taken = _alias_taken(alias, other)
                if taken is not None:
                    raise already_exists(
                        f"alias {alias!r} already names endpoint {other.name!r} ({taken}); "
                        "one host name places events at one endpoint"
                    )

    def _row_values(self, ep: EndpointRecord) -> tuple[object, ...]:
        return (
            ep.name,
            ep.url,
            ep.username,
            self._box.encrypt(ep.secret) if ep.secret else None,
            ep.ca_pem,
            int(ep.insecure_skip_verify),
            ep.max_concurrency,
            ep.requests_per_second,
            int(ep.scan_on_push),
            json.dumps(list(ep.aliases)),
            ep.create_time,
            ep.update_time,
            url_origin(ep.url) if ep.secret else "",
            self._box.encrypt(ep.webhook_secret) if ep.webhook_secret else None,
        )

    def _from_row(self, row: Row, decrypt: bool = True) -> EndpointRecord:
        keys = row.keys()
        enc = row["secret_enc"] if decrypt else None
        secret = self._box.decrypt(bytes(enc)) if enc is not None else ""
        # Rows from schema v1 hold '': their secret was given for the URL they hold.
        origin = (row["secret_origin"] if "secret_origin" in keys else "") or url_origin(
            row["url"]
        )
        if secret and origin != url_origin(row["url"]):
            secret = ""  # bound to another registry: never usable here
        wenc = row["webhook_secret_enc"] if decrypt and "webhook_secret_enc" in keys else None
        return EndpointRecord(
            name=row["name"],
            url=row["url"],
            username=row["username"],
            secret=secret,
            ca_pem=row["ca_pem"],
            insecure_skip_verify=bool(row["insecure_skip_verify"]),
            max_concurrency=row["max_concurrency"],
            requests_per_second=row["requests_per_second"],
            scan_on_push=bool(row["scan_on_push"]),
            aliases=tuple(json.loads(row["aliases"])),
            webhook_secret=self._box.decrypt(bytes(wenc)) if wenc is not None else "",
            create_time=row["create_time"],
            update_time=row["update_time"],
        )
