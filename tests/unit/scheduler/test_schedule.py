from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from services.scheduler.schedule import Calendar, Hours, Override, local_instant, service_day

PARIS = ZoneInfo("Europe/Paris")
CASABLANCA = ZoneInfo("Africa/Casablanca")


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def every_day(opens: time, closes: time) -> tuple[Hours, ...]:
    return tuple(Hours(d, opens, closes) for d in range(1, 8))


def test_hours_are_read_in_the_departments_timezone():
    calendar = Calendar(PARIS, every_day(time(8), time(17)))
    # 07:30 UTC is 09:30 in Paris in summer, 08:30 in winter.
    assert calendar.plan_at(utc(2026, 7, 1, 6, 30)).is_open
    assert not calendar.plan_at(utc(2026, 1, 7, 6, 30)).is_open
    assert calendar.plan_at(utc(2026, 1, 7, 7, 0)).is_open
    assert not calendar.plan_at(utc(2026, 1, 7, 16, 0)).is_open  # 17:00 local: closing is exclusive


def test_spring_forward_night_opens_when_the_clock_resumes():
    # 2026-03-29, Paris: 02:00 jumps to 03:00. A queue opening at 02:30 opens at 03:00 local (01:00 UTC).
    calendar = Calendar(PARIS, (Hours(7, time(2, 30), time(10)),))
    assert local_instant(date(2026, 3, 29), time(2, 30), PARIS) == utc(2026, 3, 29, 1, 0)
    assert not calendar.plan_at(utc(2026, 3, 29, 0, 59)).is_open
    assert calendar.plan_at(utc(2026, 3, 29, 1, 0)).is_open
    assert calendar.edge_between(utc(2026, 3, 29, 0, 59, 30), utc(2026, 3, 29, 1, 0)).is_open
    # 10:00 local is already summer time: 08:00 UTC.
    assert calendar.next_closing(utc(2026, 3, 29, 1, 0)) == utc(2026, 3, 29, 8, 0)


def test_fall_back_night_keeps_wall_clock_hours():
    # 2026-10-25, Paris: 03:00 falls back to 02:00. 08:00–17:00 local is 07:00–16:00 UTC that day.
    calendar = Calendar(PARIS, every_day(time(8), time(17)))
    assert not calendar.plan_at(utc(2026, 10, 25, 6, 59)).is_open
    assert calendar.plan_at(utc(2026, 10, 25, 7, 0)).is_open
    assert calendar.next_closing(utc(2026, 10, 25, 7, 0)) == utc(2026, 10, 25, 16, 0)
    # The day before, still summer time: 06:00 UTC.
    assert calendar.plan_at(utc(2026, 10, 24, 6, 0)).is_open


def test_an_edge_is_seen_once_and_catch_up_applies_the_latest_plan():
    calendar = Calendar(CASABLANCA, every_day(time(8), time(12)))
    opening = local_instant(date(2026, 11, 23), time(8), CASABLANCA)
    assert calendar.edge_between(opening - timedelta(seconds=30), opening).is_open
    assert calendar.edge_between(opening, opening + timedelta(seconds=30)) is None
    # Down from before opening until after closing: the latest plan is "closed" (a closed queue stays so).
    closing = local_instant(date(2026, 11, 23), time(12), CASABLANCA)
    assert not calendar.edge_between(opening - timedelta(hours=1), closing + timedelta(hours=1)).is_open
    # Down across the opening only: open once, on return.
    assert calendar.edge_between(opening - timedelta(hours=1), opening + timedelta(hours=1)).is_open


def test_overrides_win_over_hours_for_their_window():
    start, end = utc(2026, 11, 23, 9), utc(2026, 11, 23, 10)
    closed = Override(False, start, end, "staff meeting")
    calendar = Calendar(CASABLANCA, every_day(time(8), time(17)), (closed,))
    assert calendar.plan_at(utc(2026, 11, 23, 9, 30)).reason == "staff meeting"
    assert not calendar.plan_at(utc(2026, 11, 23, 9, 30)).is_open
    assert calendar.plan_at(end).is_open
    assert calendar.next_closing(utc(2026, 11, 23, 8, 30)) == start
    evening = Override(True, utc(2026, 11, 23, 18), utc(2026, 11, 23, 20), "vaccination evening")
    calendar = Calendar(CASABLANCA, every_day(time(8), time(17)), (evening,))
    assert calendar.plan_at(utc(2026, 11, 23, 19)).is_open
    assert calendar.next_closing(utc(2026, 11, 23, 18, 30)) == utc(2026, 11, 23, 20)


def test_service_day_is_the_local_date():
    assert service_day(utc(2026, 11, 22, 23, 30), ZoneInfo("Asia/Jerusalem")) == date(2026, 11, 23)
