"""When a department should be open: weekly hours in its own timezone, then overrides on top.

Pure functions over UTC instants. A schedule acts on its edges only (the moment the planned
state changes), so a nurse who opens early or closes for an emergency is not overruled until
the next edge. After downtime, the state planned at the end of the missed window is applied once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

_LOOKAHEAD_DAYS = 8


@dataclass(frozen=True)
class Hours:
    weekday: int  # ISO: 1 = Monday
    opens_at: time
    closes_at: time


@dataclass(frozen=True)
class Override:
    is_open: bool
    starts_at: datetime
    ends_at: datetime
    reason: str


@dataclass(frozen=True)
class Plan:
    is_open: bool
    reason: str


@dataclass(frozen=True)
class Calendar:
    timezone: ZoneInfo
    hours: tuple[Hours, ...]
    overrides: tuple[Override, ...] = ()

    def plan_at(self, at: datetime) -> Plan:
        """What the department should be at this instant, and why."""
        for override in sorted(self.overrides, key=lambda o: o.starts_at, reverse=True):
            if override.starts_at <= at < override.ends_at:
                return Plan(override.is_open, override.reason)
        local = at.astimezone(self.timezone)
        for h in self.hours:
            if h.weekday == local.isoweekday() and h.opens_at <= local.time().replace(tzinfo=None) < h.closes_at:
                return Plan(True, f"opening hours {h.opens_at:%H:%M}–{h.closes_at:%H:%M}")
        return Plan(False, "outside opening hours")

    def edge_between(self, after: datetime, until: datetime) -> Plan | None:
        """The plan to apply for the window (after, until], if the plan changed within it."""
        before, now = self.plan_at(after), self.plan_at(until)
        if before.is_open != now.is_open:
            return now
        # Closed and reopened (or the reverse) inside the window: the latest edge still counts.
        edges = [e for e in self._candidates(after, until) if after < e <= until]
        for edge in sorted(edges, reverse=True):
            if self.plan_at(edge).is_open != self.plan_at(edge - timedelta(microseconds=1)).is_open:
                return now
        return None

    def next_closing(self, after: datetime) -> datetime | None:
        """The next instant the plan goes from open to closed, within a week or so."""
        for edge in sorted(e for e in self._candidates(after, after + timedelta(days=_LOOKAHEAD_DAYS)) if e > after):
            if not self.plan_at(edge).is_open and self.plan_at(edge - timedelta(microseconds=1)).is_open:
                return edge
        return None

    def _candidates(self, start: datetime, end: datetime) -> list[datetime]:
        instants = [t for o in self.overrides for t in (o.starts_at, o.ends_at)]
        first = start.astimezone(self.timezone).date() - timedelta(days=1)
        last = end.astimezone(self.timezone).date() + timedelta(days=1)
        day = first
        while day <= last:
            for h in self.hours:
                if h.weekday == day.isoweekday():
                    instants += [local_instant(day, h.opens_at, self.timezone),
                                 local_instant(day, h.closes_at, self.timezone)]
            day += timedelta(days=1)
        return instants


def local_instant(day: date, wall: time, zone: ZoneInfo) -> datetime:
    """A wall-clock time on a local day as a UTC instant.

    A time skipped by a spring-forward change maps to the first instant after the gap (08:30 in a
    02:00→03:00 jump becomes 03:00); a time repeated in autumn is its first occurrence.
    """
    naive = datetime.combine(day, wall)
    readings = [naive.replace(tzinfo=zone, fold=f).astimezone(UTC) for f in (0, 1)]
    first = min(readings)
    if first.astimezone(zone).replace(tzinfo=None) == naive:
        return first
    # Inside a gap: the wall time does not exist that day; walk to where the clock resumes.
    instant = first
    while instant.astimezone(zone).replace(tzinfo=None) < naive:
        instant += timedelta(minutes=1)
    return instant


def service_day(at: datetime, zone: ZoneInfo) -> date:
    return at.astimezone(zone).date()
