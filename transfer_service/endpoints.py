"""Endpoints: registries the service pulls from and pushes to, with encrypted credentials.

`EndpointStore` validates and persists endpoints (the secret encrypted with `SecretBox`) and
builds registry clients for them. Other packages that must pull (the scanner, the gateway)
get an `EndpointResolver`, never the secret itself; see docs/INTERFACES.md.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NoReturn, Protocol
from urllib.parse import urlsplit

from cryptography import x509

from registry_client import RegistryClient, RegistryConfig
from servicekit.db import Database
from servicekit.errors import already_exists, invalid_argument, not_found
from transfer_service.schema import DB_FILE
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
)


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
    create_time: float = 0.0
    update_time: float = 0.0

    @property
    def has_secret(self) -> bool:
        return bool(self.secret)

    def hosts(self) -> list[str]:
        """host[:port] of the URL followed by the aliases (for matching push events)."""
        return [urlsplit(self.url).netloc, *self.aliases]


class EndpointResolver(Protocol):
    """What the scanner and the gateway receive to pull from an endpoint by name."""

    def client_for(self, name: str) -> RegistryClient: ...


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


def _url_problem(url: str) -> str | None:
    if not url:
        return "required, e.g. https://registry.example.com"
    try:
        parts = urlsplit(url)
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
    """Endpoints in SQLite; secrets encrypted with the service's key."""

    def __init__(self, db: Database, box: SecretBox) -> None:
        self._db = db
        self._box = box

    def __repr__(self) -> str:
        return f"EndpointStore({self._db.path})"

    @classmethod
    def open_readonly(cls, data_dir: str | Path, box: SecretBox) -> EndpointStore:
        """A store over the transfer service's database that can only read (for other services).

        Opens DATA/transfer.db without migrating it: the transfer service owns the schema.
        """
        return cls(_ReadOnlyDatabase(Path(data_dir) / DB_FILE), box)  # type: ignore[arg-type]

    def check_key(self) -> None:
        """Raise SecretKeyError when the key cannot decrypt the stored secrets (wrong key)."""
        row = self._db.query_one("SELECT secret_enc FROM endpoints WHERE secret_enc IS NOT NULL")
        if row is not None:
            self._box.decrypt(bytes(row["secret_enc"]))

    def create(self, ep: EndpointRecord) -> EndpointRecord:
        """Validate and store a new endpoint: INVALID_ARGUMENT, ALREADY_EXISTS."""
        violations = validate_endpoint(ep)
        if violations:
            raise invalid_argument("the endpoint is not valid", violations)
        now = time.time()
        ep = replace(ep, aliases=tuple(ep.aliases), create_time=now, update_time=now)
        try:
            with self._db.transaction() as c:
                c.execute(
                    "INSERT INTO endpoints (name, url, username, secret_enc, ca_pem, "
                    "insecure_skip_verify, max_concurrency, requests_per_second, scan_on_push, "
                    "aliases, create_time, update_time) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    self._row_values(ep),
                )
        except sqlite3.IntegrityError:
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

    def update(self, name: str, changes: dict[str, object]) -> EndpointRecord:
        """Apply `changes` (writable field -> new value) atomically; validate the result."""
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
            violations = validate_endpoint(updated)
            if violations:
                raise invalid_argument("the endpoint is not valid", violations)
            c.execute(
                "UPDATE endpoints SET url=?, username=?, secret_enc=?, ca_pem=?, "
                "insecure_skip_verify=?, max_concurrency=?, requests_per_second=?, "
                "scan_on_push=?, aliases=?, update_time=? WHERE name=?",
                (*self._row_values(updated)[1:10], updated.update_time, name),
            )
        return updated

    def delete(self, name: str) -> None:
        """Remove the endpoint; NOT_FOUND when absent."""
        if self._db.execute("DELETE FROM endpoints WHERE name = ?", (name,)) == 0:
            raise not_found(f"endpoint {name!r} not found")

    def config_for(self, name: str) -> RegistryConfig:
        """The registry client configuration of an endpoint, credentials decrypted."""
        ep = self.get(name)
        return RegistryConfig(
            url=ep.url.rstrip("/"),
            username=ep.username,
            password=ep.secret,
            ca_pem=ep.ca_pem,
            insecure_skip_verify=ep.insecure_skip_verify,
            max_concurrency=ep.max_concurrency or 8,
            requests_per_second=ep.requests_per_second,
        )

    def client_for(self, name: str) -> RegistryClient:
        """A registry client for the endpoint (use it as `async with`); NOT_FOUND when absent."""
        return RegistryClient(self.config_for(name))

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
        )

    def _from_row(self, row: sqlite3.Row) -> EndpointRecord:
        enc = row["secret_enc"]
        return EndpointRecord(
            name=row["name"],
            url=row["url"],
            username=row["username"],
            secret=self._box.decrypt(bytes(enc)) if enc is not None else "",
            ca_pem=row["ca_pem"],
            insecure_skip_verify=bool(row["insecure_skip_verify"]),
            max_concurrency=row["max_concurrency"],
            requests_per_second=row["requests_per_second"],
            scan_on_push=bool(row["scan_on_push"]),
            aliases=tuple(json.loads(row["aliases"])),
            create_time=row["create_time"],
            update_time=row["update_time"],
        )



class _ReadOnlyDatabase:
    """The query half of servicekit's Database over a read-only SQLite connection."""

    def __init__(self, path: Path) -> None:
        if not path.exists():
            raise FileNotFoundError(f"{path}: the transfer service has not created it yet")
        self.path = path
        self.conn = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, check_same_thread=False, timeout=30
        )
        self.conn.row_factory = sqlite3.Row

    def query(self, sql: str, params: Sequence[object] = ()) -> list[sqlite3.Row]:
        return self.conn.execute(sql, params).fetchall()

    def query_one(self, sql: str, params: Sequence[object] = ()) -> sqlite3.Row | None:
        return self.conn.execute(sql, params).fetchone()

    def transaction(self) -> NoReturn:
        raise PermissionError("this endpoint store is read-only; the transfer service owns it")

    def execute(self, sql: str, params: Sequence[object] = ()) -> NoReturn:
        self.transaction()
