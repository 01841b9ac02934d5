"""Trusted keys: the public keys `signed_by "NAME"` rules verify signatures against.

Stored in the policy service's database (table trusted_keys, store migration 3) and kept in
memory as parsed keys, so Evaluate verifies without reading the database. Writes log
themselves in the change log (policy_service.changes) for other replicas to reload.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from google.protobuf import timestamp_pb2
from mirror.v1 import policy_pb2

from policy_service import changes
from policy_service.validate import ENDPOINT_RE
from servicekit.db import INTEGRITY_ERRORS, Database, Row

MAX_NAME_LENGTH = 63
MAX_PEM_BYTES = 4096
PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


@dataclass(frozen=True)
class TrustedKey:
    """One stored key with its parsed form."""

    name: str
    public_key_pem: str
    algorithm: str
    fingerprint: str
    create_time_us: int
    key: PublicKey

    def to_proto(self) -> policy_pb2.TrustedKey:
        ts = timestamp_pb2.Timestamp()
        ts.FromMicroseconds(self.create_time_us)
        return policy_pb2.TrustedKey(
            name=self.name, public_key_pem=self.public_key_pem, algorithm=self.algorithm,
            fingerprint=self.fingerprint, create_time=ts,
        )


class KeyProblem(ValueError):
    """The key cannot be trusted as given; the message says why."""


def name_error(name: str) -> str | None:
    """Why `name` is not a key name (same grammar as endpoint names), or None."""
    if not name:
        return "must not be empty"
    if len(name) > MAX_NAME_LENGTH:
        return f"longer than {MAX_NAME_LENGTH} characters"
    if not ENDPOINT_RE.fullmatch(name):
        return f"{name!r} is not a key name (lowercase letters, digits, '-' and '_')"
    return None


def parse_public_key(pem: str) -> tuple[PublicKey, str, str]:
    """(key, algorithm, sha256 fingerprint of the DER SubjectPublicKeyInfo, hex).

    Only ECDSA P-256 and Ed25519 are accepted: what cosign makes and `signatures` verifies.
    """
    if not pem.strip():
        raise KeyProblem("must not be empty: a PEM public key (-----BEGIN PUBLIC KEY-----)")
    if len(pem.encode()) > MAX_PEM_BYTES:
        raise KeyProblem(f"longer than {MAX_PEM_BYTES} bytes")
    try:
        key = serialization.load_pem_public_key(pem.encode())
    except (ValueError, TypeError) as err:
        raise KeyProblem(
            "not a PEM public key (SubjectPublicKeyInfo, -----BEGIN PUBLIC KEY-----)"
        ) from err
    except Exception as err:  # cryptography raises UnsupportedAlgorithm for some inputs
        raise KeyProblem(f"cannot be read as a public key: {type(err).__name__}") from err
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise KeyProblem(
                f"ECDSA keys must use curve P-256 (this one is {key.curve.name}); "
                "only ECDSA P-256 and Ed25519 are accepted"
            )
        algorithm = "ecdsa-p256"
    elif isinstance(key, ed25519.Ed25519PublicKey):
        algorithm = "ed25519"
    else:
        raise KeyProblem(
            f"unsupported key type {type(key).__name__.removeprefix('_')}; only ECDSA P-256 "
            "and Ed25519 are accepted"
        )
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return key, algorithm, hashlib.sha256(der).hexdigest()


class KeyExists(Exception):
    """A key with this name is already stored."""


class _Missing(Exception):
    """No key to delete: rolls back the change logged for it."""


def _key(row: Row) -> TrustedKey:
    key, _, _ = parse_public_key(row["public_key_pem"])
    return TrustedKey(
        name=row["name"], public_key_pem=row["public_key_pem"], algorithm=row["algorithm"],
        fingerprint=row["fingerprint"], create_time_us=row["create_time_us"], key=key,
    )


_SELECT = "SELECT name, public_key_pem, algorithm, fingerprint, create_time_us FROM trusted_keys"


class KeyStore:
    """The trusted_keys table, with every key also held parsed in memory."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._keys: dict[str, TrustedKey] = self.read(None)  # type: ignore[assignment]

    def read(self, names: Collection[str] | None) -> dict[str, TrustedKey | None]:
        """The stored keys among `names`, parsed (None for each one missing); None: all."""
        if names is None:
            return {k.name: k for k in map(_key, self.db.query(_SELECT))}
        out: dict[str, TrustedKey | None] = dict.fromkeys(names)
        for name in names:
            row = self.db.query_one(_SELECT + " WHERE name = ?", (name,))
            out[name] = _key(row) if row else None
        return out

    def reload(self, keys: dict[str, TrustedKey | None], everything: bool) -> None:
        """Take what `read` returned into memory (`everything`: it is the whole table)."""
        held = {} if everything else dict(self._keys)
        for name, key in keys.items():
            if key is None:
                held.pop(name, None)
            else:
                held[name] = key
        self._keys = held  # replaced whole: readers see one state or the other

    def get(self, name: str) -> TrustedKey | None:
        return self._keys.get(name)

    def names(self) -> frozenset[str]:
        return frozenset(self._keys)

    def all(self) -> list[TrustedKey]:
        """Every key, ordered by name."""
        return [self._keys[n] for n in sorted(self._keys)]

    def page(self, after: str, limit: int) -> list[TrustedKey]:
        return [k for k in self.all() if k.name > after][:limit]

    def insert(self, key: TrustedKey, expected_seq: int | None = None) -> int:
        """Store a new key; returns the change seq. StaleView: `expected_seq` moved."""
        try:
            with self.db.transaction() as c:
                seq = changes.record(c, changes.KEY, [key.name], expected_seq)
                c.execute(
                    "INSERT INTO trusted_keys (name, public_key_pem, algorithm, fingerprint, "
                    "create_time_us) VALUES (?, ?, ?, ?, ?)",
                    (key.name, key.public_key_pem, key.algorithm, key.fingerprint,
                     key.create_time_us),
                )
        except INTEGRITY_ERRORS as err:
            raise KeyExists(key.name) from err
        self._keys = {**self._keys, key.name: key}
        return seq

    def delete(self, name: str, expected_seq: int | None = None) -> int | None:
        """The change seq; None when no key has this name. StaleView: `expected_seq` moved."""
        try:
            with self.db.transaction() as c:
                seq = changes.record(c, changes.KEY, [name], expected_seq)
                if c.execute("DELETE FROM trusted_keys WHERE name = ?", (name,)).rowcount == 0:
                    raise _Missing  # rolls the logged change back
        except _Missing:
            seq = None
        self._keys = {k: v for k, v in self._keys.items() if k != name}
        return seq
