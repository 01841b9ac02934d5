"""DTR tag templates: ``%n`` keeps the tag, the other specifiers render the promotion time.

Names are English whatever the process locale (no ``strftime``); times are rendered in UTC or
an IANA zone. A template that can never render a valid tag is refused at compile time, and a
rendered tag that is not valid raises TemplateError, so it is never pushed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from registry_client.names import is_tag

DEFAULT_TEMPLATE = "%n"
MAX_TAG_LENGTH = 128
_TAG_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
_FIRST_CHARS = _TAG_CHARS - {".", "-"}

WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December")


class TemplateError(ValueError):
    """A template that does not compile, or a rendered tag that is not valid.

    ``position`` is the 1-based character position in the template, when there is one.
    """

    def __init__(self, message: str, position: int | None = None) -> None:
        self.message = message
        self.position = position
        super().__init__(message if position is None else f"{message} (at position {position})")


@dataclass(frozen=True)
class _Spec:
    render: Callable[[datetime, str], str]
    min_len: int  # rendered length is at least this


def _week_of_year_monday(d: datetime) -> int:
    # Weeks start on Monday; days before the year's first Monday are in week 0 (as strftime %W).
    return (d.timetuple().tm_yday - 1 + 7 - d.weekday()) // 7


SPECIFIERS: dict[str, _Spec] = {
    "n": _Spec(lambda d, tag: tag, 1),
    "A": _Spec(lambda d, _: WEEKDAYS[d.weekday()], 6),
    "a": _Spec(lambda d, _: WEEKDAYS[d.weekday()][:3], 3),
    "w": _Spec(lambda d, _: str((d.weekday() + 1) % 7), 1),
    "d": _Spec(lambda d, _: f"{d.day:02d}", 2),
    "B": _Spec(lambda d, _: MONTHS[d.month - 1], 3),
    "b": _Spec(lambda d, _: MONTHS[d.month - 1][:3], 3),
    "m": _Spec(lambda d, _: f"{d.month:02d}", 2),
    "Y": _Spec(lambda d, _: f"{d.year:04d}", 4),
    "y": _Spec(lambda d, _: f"{d.year % 100:02d}", 2),
    "H": _Spec(lambda d, _: f"{d.hour:02d}", 2),
    "I": _Spec(lambda d, _: f"{(d.hour % 12) or 12:02d}", 2),
    "p": _Spec(lambda d, _: "AM" if d.hour < 12 else "PM", 2),
    "M": _Spec(lambda d, _: f"{d.minute:02d}", 2),
    "S": _Spec(lambda d, _: f"{d.second:02d}", 2),
    "f": _Spec(lambda d, _: f"{d.microsecond:06d}", 6),
    "Z": _Spec(lambda d, _: d.tzname() or "", 1),
    "j": _Spec(lambda d, _: f"{d.timetuple().tm_yday:03d}", 3),
    "W": _Spec(lambda d, _: f"{_week_of_year_monday(d):02d}", 2),
}

Part = str | _Spec


class Template:
    """A compiled tag template."""

    __slots__ = ("_parts", "source", "uses_time", "uses_zone")

    def __init__(self, source: str, parts: list[Part]) -> None:
        self.source = source
        self._parts = parts
        self.uses_zone = SPECIFIERS["Z"] in parts
        self.uses_time = any(isinstance(p, _Spec) and p is not SPECIFIERS["n"] for p in parts)

    def render(self, tag: str, when: datetime | None = None, tz: tzinfo | None = None) -> str:
        """The tag for an image tagged ``tag`` promoted at ``when`` (default now), in ``tz``
        (default UTC; a naive ``when`` is taken as UTC). Raises TemplateError if the result is
        not a valid tag."""
        zone = tz or UTC
        moment = datetime.now(UTC) if when is None else when
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        local = moment.astimezone(zone)
        out = "".join(p if isinstance(p, str) else p.render(local, tag) for p in self._parts)
        if not is_tag(out):
            raise TemplateError(f"template {self.source!r} rendered {out!r}, which is not a valid "
                                "tag ([a-zA-Z0-9_][a-zA-Z0-9._-]{0,127})")
        return out

    def check_zone(self, tz: tzinfo, year: int | None = None) -> None:
        """Refuse a zone whose abbreviation (``%Z``) can never be part of a tag, e.g. "+03"."""
        if not self.uses_zone:
            return
        year = year or datetime.now(UTC).year
        for month in (1, 7):  # both sides of any daylight-saving change
            name = datetime(year, month, 15, 12, tzinfo=UTC).astimezone(tz).tzname() or ""
            if not name or not set(name) <= _TAG_CHARS:
                raise TemplateError(f"%Z renders {name!r} in time zone {tz}, which is not valid "
                                    "in a tag; use another zone or drop %Z")

    def __repr__(self) -> str:
        return f"Template({self.source!r})"


def compile_template(text: str, tz: tzinfo | None = None) -> Template:
    """Compile a tag template ("" means the default, ``%n``). Unknown specifiers, a trailing
    ``%``, and templates that can never render a valid tag raise TemplateError with the
    1-based position. With ``tz``, also check that ``%Z`` renders tag-safe in that zone."""
    source = text or DEFAULT_TEMPLATE
    parts: list[Part] = []
    literal: list[str] = []
    min_len = 0
    i = 0
    while i < len(source):
        char = source[i]
        if char != "%":
            if char not in _TAG_CHARS:
                raise TemplateError(f"{char!r} can never appear in a tag (letters, digits, "
                                    "'_', '.' and '-' only)", i + 1)
            literal.append(char)
            min_len += 1
            i += 1
            continue
        if i + 1 >= len(source):
            raise TemplateError("lone '%' at the end of the template; a specifier letter "
                                "must follow", i + 1)
        code = source[i + 1]
        if code == "%":
            raise TemplateError("'%%' renders '%', which can never appear in a tag", i + 1)
        spec = SPECIFIERS.get(code)
        if spec is None:
            known = " ".join(f"%{c}" for c in SPECIFIERS)
            raise TemplateError(f"unknown specifier '%{code}'; expected one of {known}",
                                i + 1)
        if literal:
            parts.append("".join(literal))
            literal = []
        parts.append(spec)
        min_len += spec.min_len
        i += 2
    if literal:
        parts.append("".join(literal))
    first = parts[0]
    if isinstance(first, str) and first[0] not in _FIRST_CHARS:
        raise TemplateError(f"a tag cannot start with {first[0]!r}", 1)
    if min_len > MAX_TAG_LENGTH:
        raise TemplateError(f"renders at least {min_len} characters; a tag has at most "
                            f"{MAX_TAG_LENGTH}", 1)
    template = Template(source, parts)
    if tz is not None:
        template.check_zone(tz)
    return template


def validate_time_zone(name: str) -> tzinfo:
    """The zone named ``name`` (IANA, e.g. "Europe/Berlin"); "" means UTC. Raises
    TemplateError for an unknown name."""
    if not name or name == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise TemplateError(f"unknown time zone {name!r}") from exc
