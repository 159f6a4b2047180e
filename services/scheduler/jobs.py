"""Periodic work, led by one scheduler replica at a time (the runtime's job leadership)."""

from __future__ import annotations

from datetime import timedelta

from shared.events.envelope import Envelope, Event
from shared.events.jobs import Tick

from .queues import Queues

SCHEDULE = "schedule"


def _envelopes(queues_events: list[tuple[str, Event]]) -> list[Envelope]:
    return [Envelope.new(e, tenant_id=tenant) for tenant, e in queues_events]


def apply_schedules(every_s: float):
    """Open and close queues on their schedule's edges; after downtime, apply the latest plan once."""

    async def apply_schedules(tick: Tick, queues: Queues) -> list[Envelope]:
        queues = queues.at(tick.at)
        after = tick.previous or tick.at - timedelta(seconds=every_s)
        caught_up = f" (caught up after {tick.missed} missed checks)" if tick.missed else ""
        caused: list[tuple[str, Event]] = []
        for dept in await queues.departments():
            status = await queues.status(dept)
            calendar = await queues.calendar(dept)
            plan = calendar.edge_between(after, tick.at)
            if status.is_open and status.closes_at is not None and status.closes_at <= tick.at:
                events = await queues.close(dept, actor=SCHEDULE, reason=f"scheduled closing{caught_up}")
            elif plan is None or plan.is_open == status.is_open:
                continue
            elif plan.is_open:
                events = await queues.open(dept, actor=SCHEDULE, reason=f"{plan.reason}{caught_up}")
            else:
                events = await queues.close(dept, actor=SCHEDULE, reason=f"{plan.reason}{caught_up}")
            caused += [(dept.tenant_id, e) for e in events]
        return _envelopes(caused)

    return apply_schedules


async def expire_stale_tickets(tick: Tick, queues: Queues) -> list[Envelope]:
    queues = queues.at(tick.at)
    caused = []
    for dept in await queues.departments():
        caused += [(dept.tenant_id, e) for e in await queues.expire_stale(dept)]
    return _envelopes(caused)


async def recompute_statistics(tick: Tick, queues: Queues) -> list[Envelope]:
    queues = queues.at(tick.at)
    for dept in await queues.departments():
        await queues.refresh_average(dept)
    return []
