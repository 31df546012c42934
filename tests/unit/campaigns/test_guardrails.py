"""Guardrails, pure: holdout and variant draws, quiet hours in the customer's timezone."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from campaigns.guardrails import UTC_ZONE, Guardrails, QuietHours, assign_variant, in_holdout, unit_hash, zone_of

IDS = [f"customer-{i}" for i in range(20_000)]
NIGHT = QuietHours(time(21), time(8))
NEW_YORK = "America/New_York"


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


# -- holdout ---------------------------------------------------------------------------------------


def test_unit_hash_is_stable_and_in_range() -> None:
    assert unit_hash("a", "b") == unit_hash("a", "b")
    assert unit_hash("a", "b") != unit_hash("ab")  # the parts are separated
    assert unit_hash("a", "b") != unit_hash("b", "a")
    assert all(0 <= unit_hash("x", str(i)) < 1 for i in range(1000))
    # sha256 based, so the same in every process and on every machine
    assert unit_hash("holdout", "welcome", "customer-1") == pytest.approx(
        int.from_bytes(__import__("hashlib").sha256(b"holdout\x1fwelcome\x1fcustomer-1").digest()[:8], "big") / 2**64
    )


@pytest.mark.parametrize("percent", [5.0, 10.0, 25.0, 50.0])
def test_holdout_share_is_close_to_percent(percent: float) -> None:
    held = sum(in_holdout(customer, "welcome", percent) for customer in IDS)
    share = 100 * held / len(IDS)
    assert abs(share - percent) <= 1.5, share


def test_holdout_is_deterministic() -> None:
    first = [in_holdout(customer, "welcome", 10.0) for customer in IDS[:2000]]
    again = [in_holdout(customer, "welcome", 10.0) for customer in IDS[:2000]]
    assert first == again
    assert any(first) and not all(first)


def test_holdout_edges_and_campaigns_draw_independently() -> None:
    assert not any(in_holdout(customer, "welcome", 0) for customer in IDS[:2000])
    assert all(in_holdout(customer, "welcome", 100) for customer in IDS[:2000])
    a = {customer for customer in IDS if in_holdout(customer, "welcome", 50)}
    b = {customer for customer in IDS if in_holdout(customer, "winback", 50)}
    # two campaigns do not hold out the same half: the overlap is about a quarter
    assert abs(len(a & b) / len(IDS) - 0.25) <= 0.015


def test_holdout_grows_monotonically_with_percent() -> None:
    """A customer held out at 10% stays held out at 20%: raising the share only adds customers."""
    at_10 = {customer for customer in IDS if in_holdout(customer, "welcome", 10)}
    at_20 = {customer for customer in IDS if in_holdout(customer, "welcome", 20)}
    assert at_10 < at_20


# -- variants --------------------------------------------------------------------------------------


def test_variant_is_deterministic() -> None:
    weights = {"A": 50, "B": 50}
    first = [assign_variant(customer, "cart", weights) for customer in IDS[:2000]]
    assert first == [assign_variant(customer, "cart", weights) for customer in IDS[:2000]]
    assert set(first) == {"A", "B"}


def test_variant_50_50() -> None:
    counts = Counter(assign_variant(customer, "cart", {"A": 50, "B": 50}) for customer in IDS)
    assert set(counts) == {"A", "B"}
    assert abs(100 * counts["A"] / len(IDS) - 50) <= 2


def test_variant_weights_respected() -> None:
    counts = Counter(assign_variant(customer, "cart", {"A": 1, "B": 3, "C": 0, "D": 6}) for customer in IDS)
    assert counts["C"] == 0
    assert abs(100 * counts["A"] / len(IDS) - 10) <= 2
    assert abs(100 * counts["B"] / len(IDS) - 30) <= 2
    assert abs(100 * counts["D"] / len(IDS) - 60) <= 2


@pytest.mark.parametrize("weights", [{"A": 0, "B": 1}, {"A": 1, "B": 0}, {"A": 0, "B": 5, "C": 0}])
def test_zero_weight_never_chosen(weights: dict[str, int]) -> None:
    chosen = {assign_variant(customer, "cart", weights) for customer in IDS}
    assert chosen == {name for name, weight in weights.items() if weight > 0}


def test_variant_independent_of_holdout() -> None:
    """Among held-out and not held-out customers the A/B split is the same 50/50."""
    held = [customer for customer in IDS if in_holdout(customer, "cart", 50)]
    kept = [customer for customer in IDS if not in_holdout(customer, "cart", 50)]
    for group in (held, kept):
        share_a = sum(assign_variant(customer, "cart", {"A": 1, "B": 1}) == "A" for customer in group) / len(group)
        assert abs(share_a - 0.5) <= 0.03, share_a


# -- timezones -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [None, "", "Nope/Zone", "Mars/Olympus_Mons", "../etc/passwd", "America", "a" * 300])
def test_unknown_timezone_is_utc(name: str | None) -> None:
    assert zone_of(name) is UTC_ZONE


def test_known_timezone() -> None:
    assert zone_of(NEW_YORK) == ZoneInfo(NEW_YORK)


@given(st.text(max_size=60))
def test_zone_of_never_raises(name: str) -> None:
    assert isinstance(zone_of(name), ZoneInfo)


# -- quiet hours -----------------------------------------------------------------------------------


def test_parse() -> None:
    assert QuietHours.parse("21:00-08:00") == NIGHT
    assert QuietHours.parse(" 12:00 - 13:30 ") == QuietHours(time(12), time(13, 30))
    assert QuietHours.parse("") is None
    assert QuietHours.parse("   ") is None
    with pytest.raises(ValueError, match="21:00-08:00"):
        QuietHours.parse("late")
    with pytest.raises(ValueError, match="21:00-08:00"):
        QuietHours.parse("21:00-25:00")


def test_default_guardrails_have_night_quiet_hours() -> None:
    assert Guardrails().quiet_hours == NIGHT


@pytest.mark.parametrize(
    ("local", "quiet"),
    [
        (time(20, 59), False),
        (time(21), True),
        (time(23, 59), True),
        (time(0), True),
        (time(7, 59, 59), True),
        (time(8), False),
        (time(12), False),
    ],
)
def test_contains_spanning_midnight(local: time, quiet: bool) -> None:
    assert NIGHT.contains(local) is quiet


@pytest.mark.parametrize(
    ("due", "released"),
    [
        (utc(2026, 1, 14, 22, 30), utc(2026, 1, 15, 8)),  # evening: next morning
        (utc(2026, 1, 14, 21), utc(2026, 1, 15, 8)),  # the start is quiet
        (utc(2026, 1, 14, 0, 5), utc(2026, 1, 14, 8)),  # after midnight: same morning
        (utc(2026, 1, 14, 7, 59), utc(2026, 1, 14, 8)),
        (utc(2026, 12, 31, 23, 0), utc(2027, 1, 1, 8)),  # across a year
        (utc(2026, 1, 14, 8), utc(2026, 1, 14, 8)),  # the end is not quiet
        (utc(2026, 1, 14, 20, 59), utc(2026, 1, 14, 20, 59)),
        (utc(2026, 1, 14, 12), utc(2026, 1, 14, 12)),
    ],
)
def test_release_utc(due: datetime, released: datetime) -> None:
    assert NIGHT.release(due, None) == released
    assert NIGHT.release(due, "UTC") == released


def test_release_keeps_the_due_time_zone() -> None:
    released = NIGHT.release(utc(2026, 1, 14, 22, 30), None)
    assert released.utcoffset() == timedelta(0)
    assert NIGHT.release(utc(2026, 1, 14, 12), None).tzinfo is UTC


def test_release_in_customer_timezone_winter() -> None:
    # 23:00 in New York (EST, UTC-5) is 04:00 UTC the next day; quiet until 08:00 local = 13:00 UTC
    due = utc(2026, 1, 15, 4)
    assert due.astimezone(ZoneInfo(NEW_YORK)).hour == 23
    assert NIGHT.release(due, NEW_YORK) == utc(2026, 1, 15, 13)
    # the same instant is 04:00 UTC, quiet in UTC too but released at 08:00 UTC
    assert NIGHT.release(due, None) == utc(2026, 1, 15, 8)


def test_release_in_customer_timezone_summer() -> None:
    # 22:00 EDT (UTC-4) = 02:00 UTC; quiet until 08:00 EDT = 12:00 UTC
    assert NIGHT.release(utc(2026, 7, 15, 2), NEW_YORK) == utc(2026, 7, 15, 12)
    # 15:00 UTC is 11:00 EDT: not quiet in New York, even though a UTC customer would be fine too
    assert NIGHT.release(utc(2026, 7, 15, 15), NEW_YORK) == utc(2026, 7, 15, 15)
    # 22:30 UTC is 18:30 EDT: quiet in UTC, not in New York
    assert NIGHT.release(utc(2026, 7, 15, 22, 30), NEW_YORK) == utc(2026, 7, 15, 22, 30)


def test_release_unknown_timezone_is_utc() -> None:
    assert NIGHT.release(utc(2026, 1, 14, 22, 30), "Nope/Zone") == utc(2026, 1, 15, 8)
    assert NIGHT.release(utc(2026, 1, 14, 12), "Nope/Zone") == utc(2026, 1, 14, 12)


def test_quiet_hours_not_spanning_midnight() -> None:
    lunch = QuietHours(time(12), time(13))
    assert not lunch.contains(time(11, 59))
    assert lunch.contains(time(12))
    assert not lunch.contains(time(13))
    assert not lunch.contains(time(23))
    assert lunch.release(utc(2026, 1, 14, 12, 30), None) == utc(2026, 1, 14, 13)
    assert lunch.release(utc(2026, 1, 14, 12), None) == utc(2026, 1, 14, 13)
    assert lunch.release(utc(2026, 1, 14, 13), None) == utc(2026, 1, 14, 13)
    assert lunch.release(utc(2026, 1, 14, 11, 59), None) == utc(2026, 1, 14, 11, 59)
    assert lunch.release(utc(2026, 1, 14, 23, 30), None) == utc(2026, 1, 14, 23, 30)


def test_dst_spring_forward_day_new_york() -> None:
    """2026-03-08: 02:00 EST jumps to 03:00 EDT. Nothing crashes; the release is 08:00 EDT = 12:00 UTC."""
    zone = ZoneInfo(NEW_YORK)
    start = utc(2026, 3, 8, 0)
    for minutes in range(0, 24 * 60, 5):
        due = start + timedelta(minutes=minutes)
        released = NIGHT.release(due, NEW_YORK)
        assert released >= due
        assert not NIGHT.contains(released.astimezone(zone).time())
    # 01:30 EST (06:30 UTC) is quiet, released at 08:00 EDT which is 12:00 UTC (not 13:00)
    assert NIGHT.release(utc(2026, 3, 8, 6, 30), NEW_YORK) == utc(2026, 3, 8, 12)
    # 22:00 EST the evening before (03:00 UTC on the 8th): released at 08:00 EDT on the 8th
    assert NIGHT.release(utc(2026, 3, 8, 3), NEW_YORK) == utc(2026, 3, 8, 12)


def test_dst_quiet_hours_ending_inside_the_gap() -> None:
    """Quiet until 02:30 on the day 02:30 does not exist: released after the gap, not inside quiet hours."""
    quiet = QuietHours(time(22), time(2, 30))
    due = utc(2026, 3, 8, 6)  # 01:00 EST
    released = quiet.release(due, NEW_YORK)
    assert released > due
    assert not quiet.contains(released.astimezone(ZoneInfo(NEW_YORK)).time())
    assert released <= utc(2026, 3, 8, 7, 30)


def test_dst_fall_back_repeated_hour_is_not_released_early() -> None:
    """2026-11-01: 01:00-02:00 happens twice in New York. In the second 01:15 (EST, 06:15 UTC) with quiet
    hours 01:00-01:30, the release is the second 01:30 (06:30 UTC), never the first one (05:30 UTC), which
    is before the due time."""
    quiet = QuietHours(time(1), time(1, 30))
    assert quiet.release(utc(2026, 11, 1, 6, 15), NEW_YORK) == utc(2026, 11, 1, 6, 30)
    # the first 01:15 (EDT, 05:15 UTC) is released at the first 01:30
    assert quiet.release(utc(2026, 11, 1, 5, 15), NEW_YORK) == utc(2026, 11, 1, 5, 30)


ZONES = [
    None,
    "UTC",
    NEW_YORK,
    "Europe/Berlin",
    "Asia/Kolkata",
    "Australia/Lord_Howe",  # a 30 minute DST shift
    "Pacific/Chatham",
    "America/Santiago",
    "Nope/Zone",
]
dues = st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2030, 12, 31), timezones=st.just(UTC)).map(
    lambda d: d.replace(microsecond=0)
)
clock = st.builds(time, st.integers(0, 23), st.sampled_from([0, 15, 30, 45, 59]))


@settings(max_examples=500)
@given(due=dues, zone=st.sampled_from(ZONES))
def test_release_night_properties(due: datetime, zone: str | None) -> None:
    released = NIGHT.release(due, zone)
    assert released >= due
    assert not NIGHT.contains(released.astimezone(zone_of(zone)).time())
    assert released - due <= timedelta(hours=12)  # the longest wait is 21:00 to 08:00 (+1h at a DST change)
    if not NIGHT.contains(due.astimezone(zone_of(zone)).time()):
        assert released == due


@settings(max_examples=1000)
@given(due=dues, zone=st.sampled_from(ZONES), start=clock, end=clock)
def test_release_any_quiet_hours_properties(due: datetime, zone: str | None, start: time, end: time) -> None:
    quiet = QuietHours(start, end)
    released = quiet.release(due, zone)
    assert released >= due
    assert not quiet.contains(released.astimezone(zone_of(zone)).time())
    assert released - due <= timedelta(hours=25)
    if not quiet.contains(due.astimezone(zone_of(zone)).time()):
        assert released == due


@given(minute=st.integers(0, 3 * 24 * 60 - 1))
def test_release_around_dst_days_properties(minute: int) -> None:
    """Every minute of the days around both 2026 New York DST changes."""
    for day in (utc(2026, 3, 7), utc(2026, 10, 31)):
        due = day + timedelta(minutes=minute)
        released = NIGHT.release(due, NEW_YORK)
        assert released >= due
        assert not NIGHT.contains(released.astimezone(ZoneInfo(NEW_YORK)).time())


@settings(max_examples=500)
@given(
    minute=st.integers(0, 3 * 24 * 60 - 1),
    zone=st.sampled_from([NEW_YORK, "Europe/Berlin", "Australia/Lord_Howe"]),
    start=st.builds(time, st.integers(0, 23), st.integers(0, 59)),
    end=st.builds(time, st.integers(0, 23), st.integers(0, 59)),
)
def test_release_any_quiet_hours_around_dst_changes(minute: int, zone: str, start: time, end: time) -> None:
    """Any quiet hours, every minute around the 2026 DST changes of zones in both hemispheres.

    The time outside quiet hours must be longer than the DST gap (at most an hour): when all of it falls
    inside the gap there is no such time that day, which no real setting comes near.
    """
    quiet = QuietHours(start, end)
    quiet_minutes = (end.hour * 60 + end.minute - start.hour * 60 - start.minute) % (24 * 60)
    assume(24 * 60 - quiet_minutes > 60)
    days = {
        NEW_YORK: (utc(2026, 3, 7), utc(2026, 10, 31)),
        "Europe/Berlin": (utc(2026, 3, 28), utc(2026, 10, 24)),
        "Australia/Lord_Howe": (utc(2026, 4, 4), utc(2026, 10, 3)),
    }[zone]
    for day in days:
        due = day + timedelta(minutes=minute)
        released = quiet.release(due, zone)
        assert released >= due
        assert not quiet.contains(released.astimezone(ZoneInfo(zone)).time())
