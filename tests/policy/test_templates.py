"""DTR tag templates: every specifier at fixed times, zones with daylight saving and half-hour
offsets, compile-time refusals with positions, invalid rendered tags."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policy_service.templates import (
    DEFAULT_TEMPLATE,
    SPECIFIERS,
    TemplateError,
    compile_template,
    validate_time_zone,
)

# Thursday 26 November 2026, 15:30:45.123456 UTC
WHEN = datetime(2026, 11, 26, 15, 30, 45, 123456, tzinfo=UTC)
NEW_YORK = ZoneInfo("America/New_York")
KOLKATA = ZoneInfo("Asia/Kolkata")


def render(template: str, when: datetime = WHEN, tz: object = None, tag: str = "1.4-stable") -> str:
    return compile_template(template).render(tag=tag, when=when, tz=tz)  # type: ignore[arg-type]


@pytest.mark.parametrize(("spec", "expected"), [
    ("%n", "1.4-stable"),
    ("%A", "Thursday"),
    ("%a", "Thu"),
    ("%w", "4"),
    ("%d", "26"),
    ("%B", "November"),
    ("%b", "Nov"),
    ("%m", "11"),
    ("%Y", "2026"),
    ("%y", "26"),
    ("%H", "15"),
    ("%I", "03"),
    ("%p", "PM"),
    ("%M", "30"),
    ("%S", "45"),
    ("%f", "123456"),
    ("%Z", "UTC"),
    ("%j", "330"),
    ("%W", "47"),
])
def test_every_specifier_in_utc(spec: str, expected: str) -> None:
    assert render(spec) == expected


def test_the_table_is_exactly_dtrs() -> None:
    assert set(SPECIFIERS) == set("nAawdBbmYyHIpMSfZjW")


def test_combined_template_and_literals() -> None:
    assert render("%Y%m%d-%H%M%S") == "20261126-153045"
    assert render("%n-promoted.%y%j_%a") == "1.4-stable-promoted.26330_Thu"
    assert render("qa-%n") == "qa-1.4-stable"


def test_default_template_keeps_the_tag() -> None:
    assert DEFAULT_TEMPLATE == "%n"
    assert render("") == "1.4-stable"
    assert render("%n", tag="v1") == "v1"


@pytest.mark.parametrize(("hour", "twelve", "ampm"), [
    (0, "12", "AM"), (1, "01", "AM"), (11, "11", "AM"), (12, "12", "PM"), (13, "01", "PM"),
    (23, "11", "PM"),
])
def test_twelve_hour_clock(hour: int, twelve: str, ampm: str) -> None:
    assert render("%I%p", when=WHEN.replace(hour=hour)) == twelve + ampm


@pytest.mark.parametrize(("when", "expected"), [
    (datetime(2026, 1, 1, tzinfo=UTC), "Thursday-Thu-4-January-Jan-001-00"),   # before 1st Monday
    (datetime(2026, 1, 5, tzinfo=UTC), "Monday-Mon-1-January-Jan-005-01"),
    (datetime(2026, 1, 4, tzinfo=UTC), "Sunday-Sun-0-January-Jan-004-00"),
    (datetime(2024, 12, 31, tzinfo=UTC), "Tuesday-Tue-2-December-Dec-366-53"),  # leap year
    (datetime(2023, 1, 2, tzinfo=UTC), "Monday-Mon-1-January-Jan-002-01"),
    (datetime(2027, 5, 15, tzinfo=UTC), "Saturday-Sat-6-May-May-135-19"),
])
def test_names_and_calendar_numbers(when: datetime, expected: str) -> None:
    assert render("%A-%a-%w-%B-%b-%j-%W", when=when) == expected


def test_years_are_padded() -> None:
    assert render("%Y-%y", when=datetime(2005, 6, 1, tzinfo=UTC)) == "2005-05"
    assert render("%Y-%y", when=datetime(999, 6, 1, tzinfo=UTC)) == "0999-99"


def test_new_york_daylight_saving_starts() -> None:
    # 2026-03-08: 02:00 EST jumps to 03:00 EDT (07:00 UTC).
    template = compile_template("%Y%m%d-%H%M%S-%Z")
    before = datetime(2026, 3, 8, 6, 59, 59, tzinfo=UTC)
    assert template.render("x", before, NEW_YORK) == "20260308-015959-EST"
    assert template.render("x", before + timedelta(seconds=1), NEW_YORK) == "20260308-030000-EDT"


def test_new_york_daylight_saving_ends_the_hour_repeats() -> None:
    # 2026-11-01: 02:00 EDT falls back to 01:00 EST (06:00 UTC); 01:30 happens twice.
    template = compile_template("%H%M-%Z")
    assert template.render("x", datetime(2026, 11, 1, 5, 30, tzinfo=UTC), NEW_YORK) == "0130-EDT"
    assert template.render("x", datetime(2026, 11, 1, 6, 30, tzinfo=UTC), NEW_YORK) == "0130-EST"


def test_kolkata_half_hour_offset_changes_the_date() -> None:
    when = datetime(2026, 12, 31, 18, 45, tzinfo=UTC)  # 00:15 on 1 January in India
    assert render("%Y%m%d-%H%M-%Z-%j-%A", when=when, tz=KOLKATA) == "20270101-0015-IST-001-Friday"


def test_naive_datetime_is_utc() -> None:
    assert render("%H%M-%Z", when=datetime(2026, 11, 26, 15, 30)) == "1530-UTC"
    assert render("%H%M", when=datetime(2026, 11, 26, 15, 30), tz=KOLKATA) == "2100"


def test_aware_datetime_in_another_zone_is_converted() -> None:
    plus_two = timezone(timedelta(hours=2))
    assert render("%H", when=datetime(2026, 11, 26, 17, tzinfo=plus_two)) == "15"


def test_render_defaults_to_now_in_utc() -> None:
    before = datetime.now(UTC)
    out = compile_template("%Y%m%d%H%M%S").render("x")
    after = datetime.now(UTC)
    assert before.strftime("%Y%m%d%H%M%S") <= out <= after.strftime("%Y%m%d%H%M%S")


@settings(max_examples=300, deadline=None)
@given(st.datetimes(min_value=datetime(1000, 1, 1), max_value=datetime(9999, 12, 31)))
def test_numeric_specifiers_agree_with_strftime(when: datetime) -> None:
    # Numeric fields do not depend on the locale, so C's strftime is a fair reference.
    numeric = "%w-%d-%m-%Y-%y-%H-%I-%M-%S-%f-%j-%W"
    assert render(numeric, when=when.replace(tzinfo=UTC)) == when.strftime(numeric)


# ---------------------------------------------------------------------------------------------
# refusals

@pytest.mark.parametrize(("template", "position", "needle"), [
    ("%q", 1, "unknown specifier '%q'"),
    ("%Y%m%d-%H%M%s", 12, "unknown specifier '%s'"),
    ("%Y%", 3, "lone '%' at the end"),
    ("%", 1, "lone '%' at the end"),
    ("%n %Y", 3, "' ' can never appear in a tag"),
    ("%Y:%m", 3, "':' can never appear in a tag"),
    ("%n/x", 3, "'/' can never appear"),
    ("v%%1", 2, "'%%' renders '%'"),
    ("-%n", 1, "a tag cannot start with '-'"),
    (".%Y", 1, "a tag cannot start with '.'"),
    ("%f" * 22, 1, "renders at least 132 characters"),
])
def test_compile_time_refusals(template: str, position: int, needle: str) -> None:
    with pytest.raises(TemplateError) as info:
        compile_template(template)
    assert info.value.position == position
    assert needle in info.value.message
    assert f"(at position {position})" in str(info.value)


def test_unknown_specifier_lists_the_known_ones() -> None:
    with pytest.raises(TemplateError) as info:
        compile_template("%Q")
    assert "%n %A %a %w %d %B %b %m %Y %y %H %I %p %M %S %f %Z %j %W" in info.value.message


def test_rendered_tag_too_long_is_refused() -> None:
    template = compile_template("%n-%Y%m%d%H%M%S")
    assert template.render("a" * 113, WHEN) == "a" * 113 + "-20261126153045"
    with pytest.raises(TemplateError) as info:
        template.render("a" * 114, WHEN)
    assert "not a valid tag" in info.value.message
    assert info.value.position is None


def test_zone_abbreviation_that_is_not_tag_safe() -> None:
    istanbul = ZoneInfo("Europe/Istanbul")  # abbreviates as "+03"
    template = compile_template("%n-%Z")
    with pytest.raises(TemplateError, match=r"'x-\+03'"):
        template.render("x", WHEN, istanbul)
    with pytest.raises(TemplateError, match=r"%Z renders '\+03'"):
        compile_template("%n-%Z", tz=istanbul)
    compile_template("%n-%Z", tz=NEW_YORK)  # EST/EDT are fine
    compile_template("%n-%Y", tz=istanbul)  # no %Z, no problem
    assert compile_template("%n-%Y", tz=istanbul).render("x", WHEN, istanbul) == "x-2026"


def test_validate_time_zone() -> None:
    assert validate_time_zone("") is UTC
    assert validate_time_zone("UTC") is UTC
    assert validate_time_zone("Asia/Kolkata") == KOLKATA
    for bad in ("Mars/Olympus_Mons", "../../etc/passwd", "Europe/", "not a zone"):
        with pytest.raises(TemplateError, match="unknown time zone"):
            validate_time_zone(bad)
