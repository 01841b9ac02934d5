"""Outbound-event subscriptions and their delivery log, in gateway.db.

A subscription names a URL, the event types it wants (none: all) and optionally one policy.
Each event that matches becomes one durable `deliveries` row per subscription, written before
anything is sent, so pending deliveries survive a restart (gateway/deliveries.py sends them).

Secrets are HMAC keys of the signature header: encrypted at rest with the deployment's
Fernet key (the one the transfer service uses for endpoint secrets), returned once by
CreateSubscription when the server made them, never by Get/List, never logged.

`--notify-url` URLs are subscriptions too (origin "flag", to every type, unsigned): they are
written at start from the command line, and removed when the flag is.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from google.protobuf.timestamp_pb2 import Timestamp
from mirror.v1 import gateway_pb2

from servicekit.db import Database, Row, Tx
from servicekit.errors import failed_precondition, invalid_argument, not_found
from servicekit.paging import decode_token, encode_token, page_size

Delivery = gateway_pb2.Delivery
EVENT_TYPES = frozenset(v for v in gateway_pb2.EventType.values() if v)
MAX_URL = 2048
MIN_SECRET, MAX_SECRET = 16, 1024
# Pending deliveries one subscription may owe; beyond it the oldest is given up (a receiver
# down for days must not fill the disk).
MAX_PENDING_PER_SUBSCRIPTION = 10_000
ORIGIN_API, ORIGIN_FLAG = "api", "flag"


class SecretCipher(Protocol):
    """What the store needs of transfer_service.secrets.SecretBox."""

    def encrypt(self, plaintext: str) -> bytes: ...

    def decrypt(self, token: bytes) -> str: ...


class LazySecretBox:
    """The deployment's SecretBox ($MIRROR_SECRET_KEY or KEY_FILE), loaded on first use so a
    gateway without subscriptions never touches the key."""

    def __init__(self, key_file: Path) -> None:
        self.key_file = key_file
        self._box: SecretCipher | None = None

    def __repr__(self) -> str:
        return "LazySecretBox(<keys hidden>)"

    def _get(self) -> SecretCipher:
        if self._box is None:
            from transfer_service.secrets import load_secret_box

            self._box = load_secret_box(self.key_file)
        return self._box

    def encrypt(self, plaintext: str) -> bytes:
        return self._get().encrypt(plaintext)

    def decrypt(self, token: bytes) -> str:
        return self._get().decrypt(token)


@dataclass
class SubscriptionRecord:
    id: str
    url: str
    event_types: tuple[int, ...]
    policy_id: str
    has_secret: bool
    create_time: float
    origin: str = ORIGIN_API

    def wants(self, event_type: int, policy_id: str) -> bool:
        if self.event_types and event_type not in self.event_types:
            return False
        return not self.policy_id or self.policy_id == policy_id

    def to_proto(self) -> gateway_pb2.Subscription:
        s = gateway_pb2.Subscription(
            id=self.id,
            url=self.url,
            event_types=list(self.event_types),  # type: ignore[arg-type]
            policy_id=self.policy_id,
            has_secret=self.has_secret,
        )
        s.create_time.CopyFrom(_ts(self.create_time))
        return s


@dataclass
class DeliveryRecord:
    id: str
    subscription_id: str
    event_id: str
    event_type: int
    run_id: str
    state: int
    attempts: int
    response_code: int
    message: str
    create_time: float
    last_attempt_time: float | None
    next_attempt_at: float = 0.0
    body: bytes = field(default=b"", repr=False)

    def to_proto(self) -> gateway_pb2.Delivery:
        d = Delivery(
            id=self.id,
            subscription_id=self.subscription_id,
            event_type=self.event_type,  # type: ignore[arg-type]
            run_id=self.run_id,
            state=self.state,  # type: ignore[arg-type]
            attempts=self.attempts,
            response_code=self.response_code,
            message=self.message,
        )
        d.create_time.CopyFrom(_ts(self.create_time))
        if self.last_attempt_time is not None:
            d.last_attempt_time.CopyFrom(_ts(self.last_attempt_time))
        return d


@dataclass(frozen=True)
class Target:
    """Where and how one delivery is sent (the secret in clear: never log this)."""

    url: str
    secret: str = field(repr=False)


def _ts(t: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(t * 1e9))
    return ts


def _subscription(row: Row) -> SubscriptionRecord:
    return SubscriptionRecord(
        id=row["id"],
        url=row["url"],
        event_types=tuple(json.loads(row["event_types"])),
        policy_id=row["policy_id"],
        has_secret=bool(row["secret"]),
        create_time=row["create_time"],
        origin=row["origin"],
    )


_DELIVERY_COLUMNS = (
    "id, subscription_id, event_id, event_type, run_id, state, attempts, response_code,"
    " message, create_time, last_attempt_time, next_attempt_at"
)


def _delivery(row: Row, body: bool = False) -> DeliveryRecord:
    d = DeliveryRecord(**{k: row[k] for k in _DELIVERY_COLUMNS.replace(" ", "").split(",")})
    if body:
        d.body = bytes(row["body"])
    return d


def check_subscription(sub: gateway_pb2.Subscription) -> list[tuple[str, str]]:
    """Field violations of a subscription to create (empty: valid)."""
    bad: list[tuple[str, str]] = []
    if sub.id:
        bad.append(("subscription.id", "server-assigned; leave it empty"))
    problem = url_problem(sub.url)
    if problem:
        bad.append(("subscription.url", problem))
    for t in sub.event_types:
        if t not in EVENT_TYPES:
            bad.append(("subscription.event_types", f"{t} is not an event type"))
    if sub.secret and not (
        MIN_SECRET <= len(sub.secret) <= MAX_SECRET
        and sub.secret.isascii()
        and sub.secret.isprintable()
        and " " not in sub.secret
    ):
        # Never echo the secret itself.
        bad.append(
            (
                "subscription.secret",
                f"{MIN_SECRET}-{MAX_SECRET} printable ASCII characters without spaces",
            )
        )
    return bad


def url_problem(url: str) -> str:
    """Why `url` cannot receive events ('' when it can)."""
    if not url:
        return "required: the http(s) URL events are POSTed to"
    if len(url) > MAX_URL:
        return f"longer than {MAX_URL} characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return "not a valid URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http:// or https:// URL with a host"
    if parts.username is not None or parts.password is not None:
        # Get/List return the URL: a password in it would be a secret shown to readers.
        return "must not hold user:password@ (use the signature to authenticate events)"
    if any(c.isspace() for c in url):
        return "must not contain spaces"
    return ""


def flag_subscription_id(url: str) -> str:
    """Stable id of a --notify-url subscription (the same URL keeps its delivery log)."""
    return "notify-" + hashlib.sha256(url.encode()).hexdigest()[:16]


class SubscriptionStore:
    """Subscriptions and deliveries in gateway.db."""

    def __init__(self, db: Database, cipher: SecretCipher | None = None) -> None:
        self.db = db
        self.cipher = cipher

    # -- subscriptions ----------------------------------------------------------------------

    def create(self, sub: gateway_pb2.Subscription) -> gateway_pb2.Subscription:
        """Store a valid subscription; the answer carries the secret only when made here."""
        bad = check_subscription(sub)
        if bad:
            raise invalid_argument("the subscription is not valid", bad)
        if self.cipher is None:
            raise failed_precondition("this gateway has no secret key to store secrets with")
        made = not sub.secret
        secret = sub.secret or secrets.token_urlsafe(32)
        rec = SubscriptionRecord(
            id=uuid.uuid4().hex,
            url=sub.url,
            event_types=tuple(sorted(set(int(t) for t in sub.event_types))),
            policy_id=sub.policy_id,
            has_secret=True,
            create_time=time.time(),
        )
        try:
            token = self.cipher.encrypt(secret)
        except (ValueError, OSError) as exc:  # a bad $MIRROR_SECRET_KEY or key file
            raise failed_precondition(f"cannot store the secret: {exc}") from None
        self._insert(rec, token)
        out = rec.to_proto()
        if made:
            out.secret = secret
        return out

    def _insert(self, rec: SubscriptionRecord, secret: bytes) -> None:
        self.db.execute(
            "INSERT INTO subscriptions (id, url, event_types, policy_id, secret, create_time,"
            " origin) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                rec.id,
                rec.url,
                json.dumps(list(rec.event_types)),
                rec.policy_id,
                secret,
                rec.create_time,
                rec.origin,
            ),
        )

    def get(self, sub_id: str) -> SubscriptionRecord:
        row = self.db.query_one("SELECT * FROM subscriptions WHERE id = ?", (sub_id,))
        if row is None:
            raise not_found(f"subscription {sub_id!r} not found", reason="SUBSCRIPTION_NOT_FOUND")
        return _subscription(row)

    def all(self) -> list[SubscriptionRecord]:
        return [_subscription(r) for r in self.db.query("SELECT * FROM subscriptions ORDER BY seq")]

    def page(self, size: int, token: str) -> tuple[list[SubscriptionRecord], str]:
        """Oldest first; returns (subscriptions, next_page_token)."""
        n = page_size(size)
        after = int(str(decode_token(token, expect={"list": "subscriptions"}).get("after", 0)))
        rows = self.db.query(
            "SELECT * FROM subscriptions WHERE seq > ? ORDER BY seq LIMIT ?", (after, n + 1)
        )
        nxt = ""
        if len(rows) > n:
            rows = rows[:n]
            nxt = encode_token({"list": "subscriptions", "after": int(rows[-1]["seq"])})
        return [_subscription(r) for r in rows], nxt

    def delete(self, sub_id: str) -> None:
        """Remove a subscription with its delivery log (pending deliveries are not sent)."""
        rec = self.get(sub_id)
        if rec.origin == ORIGIN_FLAG:
            raise failed_precondition(
                f"subscription {sub_id!r} comes from --notify-url {rec.url}; remove the flag "
                "and restart the gateway instead",
                [("CONFIGURED", f"subscriptions/{sub_id}", "set by the --notify-url flag")],
                reason="CONFIGURED_SUBSCRIPTION",
            )
        self.db.execute("DELETE FROM subscriptions WHERE id = ?", (sub_id,))

    def sync_flag_urls(self, urls: Sequence[str]) -> None:
        """Make the "flag" subscriptions exactly `urls` (unsigned, every event type)."""
        wanted = {flag_subscription_id(u): u for u in dict.fromkeys(urls)}
        with self.db.transaction() as c:
            have = {
                r["id"]
                for r in c.execute("SELECT id FROM subscriptions WHERE origin = ?", (ORIGIN_FLAG,))
            }
            for sub_id in have - set(wanted):
                c.execute("DELETE FROM subscriptions WHERE id = ?", (sub_id,))
            now = time.time()
            for sub_id, url in wanted.items():
                if sub_id not in have:
                    # Replicas starting together with the same flags: the first one writes it.
                    c.execute(
                        "INSERT INTO subscriptions (id, url, event_types, policy_id, secret,"
                        " create_time, origin) VALUES (?, ?, '[]', '', ?, ?, ?)"
                        " ON CONFLICT (id) DO NOTHING",
                        (sub_id, url, b"", now, ORIGIN_FLAG),
                    )

    # -- deliveries -------------------------------------------------------------------------

    def enqueue(
        self, event_type: int, policy_id: str, run_id: str, doc: dict[str, object]
    ) -> list[str]:
        """One pending delivery per subscription that wants the event; returns their ids.
        Every subscription gets the same bytes (and the same event id in them)."""
        subs = [s for s in self.all() if s.wants(event_type, policy_id)]
        if not subs:
            return []
        body = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
        event_id = str(doc.get("id") or uuid.uuid4().hex)
        now = time.time()
        ids = []
        with self.db.transaction() as c:
            for s in subs:
                self._bound_backlog(c, s.id, now)
                d_id = uuid.uuid4().hex
                c.execute(
                    "INSERT INTO deliveries (id, subscription_id, event_id, event_type, run_id,"
                    " body, state, create_time, next_attempt_at) VALUES (?,?,?,?,?,?,?,?,?)",
                    (d_id, s.id, event_id, event_type, run_id, body, Delivery.STATE_PENDING,
                     now, now),
                )
                ids.append(d_id)
        return ids

    def _bound_backlog(self, c: Tx, sub_id: str, now: float) -> None:
        (pending,) = c.execute(
            "SELECT COUNT(*) FROM deliveries WHERE subscription_id = ? AND state = ?",
            (sub_id, Delivery.STATE_PENDING),
        ).fetchone()
        if pending >= MAX_PENDING_PER_SUBSCRIPTION:
            c.execute(
                "UPDATE deliveries SET state = ?, message = ?, next_attempt_at = 0 WHERE seq ="
                " (SELECT MIN(seq) FROM deliveries WHERE subscription_id = ? AND state = ?)",
                (
                    Delivery.STATE_FAILED,
                    f"given up: more than {MAX_PENDING_PER_SUBSCRIPTION} deliveries pending",
                    sub_id,
                    Delivery.STATE_PENDING,
                ),
            )

    def due(self, now: float, limit: int, skip: Iterable[str] = ()) -> list[str]:
        """Ids of pending deliveries whose next attempt is due, oldest first."""
        skipped = set(skip)
        rows = self.db.query(
            "SELECT id FROM deliveries WHERE state = ? AND next_attempt_at <= ?"
            " ORDER BY next_attempt_at, seq LIMIT ?",
            (Delivery.STATE_PENDING, now, limit + len(skipped)),
        )
        return [r["id"] for r in rows if r["id"] not in skipped][:limit]

    def next_due_time(self) -> float | None:
        row = self.db.query_one(
            "SELECT MIN(next_attempt_at) AS t FROM deliveries WHERE state = ?",
            (Delivery.STATE_PENDING,),
        )
        return None if row is None or row["t"] is None else float(row["t"])

    def pending_count(self) -> int:
        row = self.db.query_one(
            "SELECT COUNT(*) AS n FROM deliveries WHERE state = ?", (Delivery.STATE_PENDING,)
        )
        return int(row["n"]) if row else 0

    def load(self, delivery_id: str) -> tuple[DeliveryRecord, Target] | None:
        """A pending delivery with its body and target (None: delivered, given up or its
        subscription deleted meanwhile)."""
        row = self.db.query_one(
            f"SELECT d.{_DELIVERY_COLUMNS.replace(', ', ', d.')}, d.body, s.url, s.secret"
            " FROM deliveries d JOIN subscriptions s ON s.id = d.subscription_id"
            " WHERE d.id = ? AND d.state = ?",
            (delivery_id, Delivery.STATE_PENDING),
        )
        if row is None:
            return None
        stored = bytes(row["secret"] or b"")
        secret = ""
        if stored:
            if self.cipher is None:
                raise RuntimeError("a signed subscription needs the secret key")
            secret = self.cipher.decrypt(stored)
        return _delivery(row, body=True), Target(url=row["url"], secret=secret)

    def record_attempt(
        self,
        delivery_id: str,
        *,
        state: int,
        response_code: int,
        message: str,
        at: float,
        next_attempt_at: float = 0.0,
    ) -> None:
        self.db.execute(
            "UPDATE deliveries SET state = ?, attempts = attempts + 1, response_code = ?,"
            " message = ?, last_attempt_time = ?, next_attempt_at = ?"
            " WHERE id = ? AND state = ?",
            (state, response_code, message, at, next_attempt_at, delivery_id,
             Delivery.STATE_PENDING),
        )

    def give_up_older_than(self, cutoff: float, skip: Iterable[str] = ()) -> int:
        """Pending deliveries created before `cutoff` become FAILED (max age reached)."""
        skipped = set(skip)
        rows = self.db.query(
            "SELECT id, message FROM deliveries WHERE state = ? AND create_time < ?",
            (Delivery.STATE_PENDING, cutoff),
        )
        n = 0
        for r in rows:
            if r["id"] in skipped:
                continue
            last = f" (last attempt: {r['message']})" if r["message"] else ""
            n += self.db.execute(
                "UPDATE deliveries SET state = ?, message = ?, next_attempt_at = 0"
                " WHERE id = ? AND state = ?",
                (Delivery.STATE_FAILED, f"given up: older than the maximum age{last}", r["id"],
                 Delivery.STATE_PENDING),
            )
        return n

    def forget_finished(self, cutoff: float) -> int:
        """Delete delivered/failed log entries created before `cutoff`."""
        return self.db.execute(
            "DELETE FROM deliveries WHERE state != ? AND create_time < ?",
            (Delivery.STATE_PENDING, cutoff),
        )

    def get_delivery(self, delivery_id: str) -> DeliveryRecord | None:
        row = self.db.query_one(
            f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE id = ?", (delivery_id,)
        )
        return None if row is None else _delivery(row)

    def deliveries(
        self, subscription_id: str, size: int, token: str
    ) -> tuple[list[DeliveryRecord], str]:
        """The delivery log, newest first (one subscription, or all when empty)."""
        if subscription_id:
            self.get(subscription_id)  # NOT_FOUND for an unknown one
        n = page_size(size)
        filt: dict[str, object] = {"subscription_id": subscription_id}
        state = decode_token(token, expect=filt)
        where: list[str] = ["1=1"]
        params: list[object] = []
        if subscription_id:
            where.append("subscription_id = ?")
            params.append(subscription_id)
        if "before" in state:
            where.append("seq < ?")
            params.append(int(str(state["before"])))
        rows = self.db.query(
            f"SELECT seq, {_DELIVERY_COLUMNS} FROM deliveries WHERE {' AND '.join(where)}"
            " ORDER BY seq DESC LIMIT ?",
            (*params, n + 1),
        )
        nxt = ""
        if len(rows) > n:
            rows = rows[:n]
            nxt = encode_token({**filt, "before": int(rows[-1]["seq"])})
        return [_delivery(r) for r in rows], nxt
