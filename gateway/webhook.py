"""Parse the distribution registry's notification envelope into push events.

Per-event handling (the registry retries a non-2xx body forever, and one stuck body blocks its
whole per-endpoint queue, so a body is refused only when nothing in it can be used):

* not JSON (also: nested too deeply, numbers too long to convert), not an object with an
  ``events`` list, or *every* event malformed -> 400 with a short reason (nothing is recorded; a
  real registry never sends such a body);
* a mix of valid and malformed events -> the valid ones are recorded, the answer is 200 and its
  JSON lists the rejected ones (a 400 would make the registry retry the good ones forever);
* valid events that are not a tagged manifest push (blob pushes, pulls, mounts, deletes,
  pushes by digest) are counted and dropped: they never enter the inbox.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from registry_client import mediatypes, names

ENVELOPE_MEDIA_TYPE = "application/vnd.docker.distribution.events.v1+json"

MANIFEST_MEDIA_TYPES = frozenset(mediatypes.MANIFEST_TYPES)

_MAX_ID = 256


class EnvelopeError(ValueError):
    """The body as a whole is unusable (not JSON, not an envelope)."""


@dataclass(frozen=True)
class PushEvent:
    """A tagged manifest push: the only kind of event the gateway acts on."""

    event_id: str
    repository: str
    tag: str
    digest: str
    media_type: str
    # host[:port] names under which the source registry reported itself.
    hosts: tuple[str, ...]
    timestamp: str = ""


@dataclass
class ParsedBody:
    """The outcome of parsing one envelope."""

    pushes: list[PushEvent] = field(default_factory=list)
    # (action, why) of valid events that are not acted on, for metrics.
    ignored: list[tuple[str, str]] = field(default_factory=list)
    # (index in the body, event id or "", reason) of malformed events.
    rejected: list[tuple[int, str, str]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.pushes) + len(self.ignored) + len(self.rejected)


def host_of_url(url: str) -> str:
    """`host:port` of a URL, with the scheme's default port made explicit ('' if none)."""
    try:
        parts = urlsplit(url if "://" in url else f"//{url}")
        host = (parts.hostname or "").lower()
        port = parts.port
    except ValueError:
        return ""
    if not host:
        return ""
    if port is None:
        port = 443 if parts.scheme == "https" else 80 if parts.scheme == "http" else None
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return f"{host}:{port}" if port is not None else host


def host_variants(text: str) -> list[str]:
    """Normalized host:port forms of a URL, or of a host[:port] (without a port: both defaults)."""
    if "://" in text or ":" in text.rsplit("]", 1)[-1]:
        h = host_of_url(text)
        return [h] if h else []
    return [h for h in (host_of_url(f"http://{text}"), host_of_url(f"https://{text}")) if h]


def parse_body(raw: bytes) -> ParsedBody:
    """Parse an envelope; raise EnvelopeError when the body as a whole is unusable."""
    try:
        doc = json.loads(raw)
    except RecursionError as exc:
        # The C decoder stops at the interpreter's recursion limit: a hostile body, not a 500.
        raise EnvelopeError("body is not JSON: nested too deeply") from exc
    except ValueError as exc:
        # JSONDecodeError, UnicodeDecodeError, and int() refusing a number of >4300 digits.
        raise EnvelopeError(f"body is not JSON: {str(exc)[:200]}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("events"), list):
        raise EnvelopeError('body is not an envelope: expected {"events": [...]}')
    out = ParsedBody()
    for i, ev in enumerate(doc["events"]):
        _parse_event(i, ev, out)
    return out


def _parse_event(index: int, ev: Any, out: ParsedBody) -> None:
    if not isinstance(ev, dict):
        out.rejected.append((index, "", "event is not an object"))
        return
    eid = ev.get("id")
    # isprintable also refuses lone surrogates, which SQLite cannot store (that was a 500).
    if not isinstance(eid, str) or not eid or len(eid) > _MAX_ID or not eid.isprintable():
        out.rejected.append((index, "", "event has no valid 'id'"))
        return
    action = ev.get("action")
    if not isinstance(action, str) or not action:
        out.rejected.append((index, eid, "event has no 'action'"))
        return
    target = ev.get("target")
    if not isinstance(target, dict):
        out.rejected.append((index, eid, "event has no 'target' object"))
        return
    if action != "push":
        out.ignored.append((action, "not a push"))
        return
    media_type = target.get("mediaType")
    if not isinstance(media_type, str) or not media_type:
        out.rejected.append((index, eid, "push event has no 'target.mediaType'"))
        return
    if media_type not in MANIFEST_MEDIA_TYPES:
        out.ignored.append((action, "not a manifest"))
        return
    tag = target.get("tag") or ""
    if not tag:
        out.ignored.append((action, "pushed by digest"))
        return
    repo = target.get("repository")
    digest = target.get("digest")
    problems = []
    if not isinstance(repo, str) or not names.is_repository(repo):
        problems.append("'target.repository' missing or invalid")
    if not isinstance(tag, str) or not names.is_tag(tag):
        problems.append("'target.tag' invalid")
    if not isinstance(digest, str) or not names.is_digest(digest):
        problems.append("'target.digest' missing or invalid")
    if problems:
        out.rejected.append((index, eid, "; ".join(problems)))
        return
    hosts: list[str] = []
    request = ev.get("request")
    if isinstance(request, dict) and isinstance(request.get("host"), str):
        hosts.extend(host_variants(request["host"]))
    if isinstance(target.get("url"), str):
        hosts.extend(h for h in host_variants(target["url"]) if h not in hosts)
    ts = ev.get("timestamp")
    out.pushes.append(
        PushEvent(
            event_id=eid,
            repository=str(repo),
            tag=str(tag),
            digest=str(digest),
            media_type=media_type,
            hosts=tuple(hosts),
            timestamp=ts if isinstance(ts, str) else "",
        )
    )
