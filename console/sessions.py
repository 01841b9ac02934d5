"""Signed-in sessions kept in memory: the API token never reaches the browser again.

The browser holds only a random session id (HttpOnly, SameSite=Strict cookie). Each session
has its own CSRF token and its own SDK client carrying the user's token; it ends after an idle
timeout or a maximum age, whichever comes first, and on sign-out.
"""

from __future__ import annotations

import enum
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mirror import aio


class Role(enum.IntEnum):
    READ = 1
    ADMIN = 2


@dataclass
class Session:
    id: str
    role: Role
    client: aio.AsyncClient
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    created: float = field(default_factory=time.monotonic)
    last_seen: float = field(default_factory=time.monotonic)
    # Connection checks asked for by a POST and not yet streamed (console.views.connect).
    connects: dict[str, Any] = field(default_factory=dict)

    @property
    def can_write(self) -> bool:
        return self.role >= Role.ADMIN

    def csrf_ok(self, presented: str | None) -> bool:
        return bool(presented) and hmac.compare_digest(self.csrf, presented or "")


class SessionStore:
    """Sessions by id, with idle and absolute expiry and a bound on how many are kept."""

    def __init__(
        self, idle_s: float, max_age_s: float, max_sessions: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.idle_s = idle_s
        self.max_age_s = max_age_s
        self.max_sessions = max_sessions
        self._clock = clock
        self._sessions: dict[str, Session] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    async def create(self, role: Role, client: aio.AsyncClient) -> Session:
        await self.expire()
        while len(self._sessions) >= self.max_sessions:
            oldest = min(self._sessions.values(), key=lambda s: s.last_seen)
            await self.end(oldest.id)
        now = self._clock()
        s = Session(secrets.token_urlsafe(32), role, client, created=now, last_seen=now)
        self._sessions[s.id] = s
        return s

    def _expired(self, s: Session, now: float) -> bool:
        return now - s.last_seen > self.idle_s or now - s.created > self.max_age_s

    async def get(self, sid: str | None) -> Session | None:
        """The live session with this id (its idle clock restarts), or None."""
        if not sid:
            return None
        s = self._sessions.get(sid)
        if s is None:
            return None
        now = self._clock()
        if self._expired(s, now):
            await self.end(sid)
            return None
        s.last_seen = now
        return s

    def alive(self, session: Session) -> bool:
        """Whether the session is still signed in, without counting this as activity."""
        return (self._sessions.get(session.id) is session
                and not self._expired(session, self._clock()))

    async def end(self, sid: str) -> None:
        s = self._sessions.pop(sid, None)
        if s is not None:
            await s.client.close()

    async def expire(self) -> None:
        now = self._clock()
        for sid in [k for k, s in self._sessions.items() if self._expired(s, now)]:
            await self.end(sid)

    async def close(self) -> None:
        for sid in list(self._sessions):
            await self.end(sid)
