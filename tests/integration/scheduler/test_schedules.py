"""Queues opened and closed by their schedule: across a DST night, after downtime, and with two replicas."""

import asyncio
import json
import sys
import uuid
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import asyncpg

from services.scheduler import jobs
from services.scheduler.queues import Queues
from shared.events.jobs import Tick
from shared.events.runtime import JOB_RUNNERS
from tests.support import Listener, eventually

from .conftest import OPD, scheduler, staff_api
from .test_queues import SCHEDULER_EVENTS, _of


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


async def _tick(database_url: str, at: datetime, previous: datetime | None, missed: int = 0):
    """Run the schedule job for one tick, as its leader would: one transaction, events returned."""
    conn = await asyncpg.connect(database_url, server_settings={"search_path": "scheduler"})
    try:
        async with conn.transaction():
            envelopes = await jobs.apply_schedules(30.0)(Tick(at, previous, missed, 1), Queues(conn))
            status = await conn.fetchrow("SELECT is_open, reason, closes_at FROM queue_status")
    finally:
        await conn.close()
    return [e.data for e in envelopes], status


async def test_schedule_opens_and_closes_across_a_dst_night(isolated):
    async with staff_api(isolated) as (admin, keys, _):
        await admin.call("POST", "/v1/departments", {**OPD, "timezone": "Europe/Paris"})
        # Sunday 29 March 2026: Paris clocks jump from 02:00 to 03:00.
        status, _ = await admin.call("PUT", "/v1/departments/OPD/schedule",
                                     {"hours": [{"weekday": "sun", "opens_at": "02:30", "closes_at": "10:00"}]})
        assert status == 200
    url = isolated.database_url

    events, status = await _tick(url, utc(2026, 3, 29, 0, 59, 30), utc(2026, 3, 29, 0, 59))
    assert events == [] and not status["is_open"]
    # 02:30 does not exist that night: the queue opens when the clock resumes, 03:00 local = 01:00 UTC.
    events, status = await _tick(url, utc(2026, 3, 29, 1, 0), utc(2026, 3, 29, 0, 59, 30))
    assert [e.type for e in events] == ["queue.opened", "queue.status.changed"]
    assert events[0].opened_by == "schedule" and events[0].closes_at == utc(2026, 3, 29, 8, 0)
    events, _ = await _tick(url, utc(2026, 3, 29, 1, 0, 30), utc(2026, 3, 29, 1, 0))
    assert events == []
    # 10:00 local is summer time already: 08:00 UTC.
    events, status = await _tick(url, utc(2026, 3, 29, 7, 59, 30), utc(2026, 3, 29, 7, 59))
    assert events == [] and status["is_open"]
    events, status = await _tick(url, utc(2026, 3, 29, 8, 0), utc(2026, 3, 29, 7, 59, 30))
    assert [e.type for e in events] == ["queue.closed", "queue.status.changed"] and not status["is_open"]

    # Down over the next Sunday's opening: opened once on return, saying so.
    events, status = await _tick(url, utc(2026, 4, 5, 3, 0), utc(2026, 4, 5, 0, 0), missed=360)
    assert [e.type for e in events] == ["queue.opened", "queue.status.changed"]
    assert "caught up after 360 missed checks" in events[0].reason
    # Down over a whole opening: nothing to do, and never an opening after hours.
    await _tick(url, utc(2026, 4, 5, 8, 0), utc(2026, 4, 5, 7, 59, 30))
    events, status = await _tick(url, utc(2026, 4, 12, 12, 0), utc(2026, 4, 12, 0, 0), missed=1440)
    assert events == [] and not status["is_open"]


async def test_a_manual_opening_outside_hours_lasts_until_the_next_scheduled_closing(isolated):
    async with staff_api(isolated) as (admin, keys, _):
        await admin.call("POST", "/v1/departments", {**OPD, "timezone": "UTC"})
        await admin.call("PUT", "/v1/departments/OPD/schedule", {"hours": [
            {"weekday": d, "opens_at": "08:00", "closes_at": "12:00"} for d in range(1, 8)]})
        status, body = await admin.call("POST", "/v1/departments/OPD/open", {"reason": "emergency"})
        closes_at = datetime.fromisoformat(body["closes_at"])
        assert closes_at.hour == 12 and closes_at > datetime.now(UTC)
        events, _ = await _tick(isolated.database_url, closes_at - timedelta(minutes=1),
                                closes_at - timedelta(minutes=2))
        assert events == []
        events, status = await _tick(isolated.database_url, closes_at, closes_at - timedelta(seconds=30))
        assert [e.type for e in events] == ["queue.closed", "queue.status.changed"] and not status["is_open"]


def _zone_at_midday() -> str:
    """A timezone whose local clock is far from midnight now, so a few seconds of hours fit in one day."""
    for name in ("UTC", "Asia/Tokyo", "America/New_York", "Asia/Kolkata"):
        if 1 <= datetime.now(ZoneInfo(name)).hour <= 21:
            return name
    raise AssertionError("no suitable timezone")


async def test_two_replicas_open_and_close_once_and_the_survivor_takes_over(isolated):
    zone = _zone_at_midday()
    async with staff_api(isolated) as (admin, keys, _):
        await admin.call("POST", "/v1/departments", {**OPD, "timezone": zone})
        local = datetime.now(ZoneInfo(zone))
        opens, closes = local + timedelta(seconds=3), local + timedelta(seconds=7)
        status, _ = await admin.call("PUT", "/v1/departments/OPD/schedule", {"hours": [
            {"weekday": opens.isoweekday(), "opens_at": opens.strftime("%H:%M:%S"),
             "closes_at": closes.strftime("%H:%M:%S")}]})
        assert status == 200

    settings = isolated.settings()
    async with Listener(isolated.amqp_url, "wabus.scheduler", SCHEDULER_EVENTS) as events:
        first = scheduler(settings, schedule_every_s=0.5)
        second = scheduler(settings, schedule_every_s=0.5)
        a, b = await first.__aenter__(), await second.__aenter__()
        try:
            await eventually(lambda: _async(_of(events, "queue.opened")), timeout=15, what="scheduled opening")
            runners = {name: next(r for r in s.app[JOB_RUNNERS] if r.job.name == "apply_schedules")
                       for name, s in (("a", a), ("b", b))}
            leader = next(name for name, r in runners.items() if r.is_leader)
            # The leader dies without a goodbye; the survivor must close the queue, once.
            runners[leader].terminate()
            await (first if leader == "a" else second).__aexit__(None, None, None)
            await eventually(lambda: _async(_of(events, "queue.closed")), timeout=15, what="scheduled closing")
            await asyncio.sleep(2)
        finally:
            await (second if leader == "a" else first).__aexit__(None, None, None)
    assert len(_of(events, "queue.opened")) == 1 and len(_of(events, "queue.closed")) == 1
    assert [json.loads(m.body)["data"]["is_open"] for m in events.messages if m.type == "queue.status.changed"] \
        == [True, False]


async def test_a_restart_in_the_middle_of_the_day_keeps_every_ticket_and_status(isolated):
    async with staff_api(isolated) as (admin, keys, _):
        await admin.call("POST", "/v1/departments", OPD)
        await admin.call("POST", "/v1/departments/OPD/open", {"message": "Dr. B is in today"})
        for n in range(3):
            await admin.call("POST", "/v1/departments/OPD/tickets", {"phone": f"+2126000004{n:02d}"})
        await admin.call("POST", "/v1/departments/OPD/call-next", {"counter": "1"})
        _, before = await admin.call("GET", "/v1/departments/OPD/tickets")
        _, status_before = await admin.call("GET", "/v1/departments/OPD/status")
    async with staff_api(isolated) as (admin, keys, _):
        admin = admin.as_(keys["clinic-a"]["admin"])
        _, after = await admin.call("GET", "/v1/departments/OPD/tickets")
        _, status_after = await admin.call("GET", "/v1/departments/OPD/status")
        assert after == before and status_after == status_before
        status, called = await admin.call("POST", "/v1/departments/OPD/call-next")
        assert status == 200 and called["ticket"] == "OPD-002"
        status, issued = await admin.call("POST", "/v1/departments/OPD/tickets", {"phone": "+212600000499"})
        assert issued["ticket"] == "OPD-004"


async def _async(value):
    return value


async def test_end_of_day_expires_what_is_left_unless_carried_over(isolated):
    async with staff_api(isolated) as (admin, keys, _):
        await admin.call("POST", "/v1/departments", OPD)
        await admin.call("POST", "/v1/departments", {**OPD, "code": "LAB", "on_close": "carry_over"})
        for code in ("OPD", "LAB"):
            await admin.call("POST", f"/v1/departments/{code}/open")
            for n in range(2):
                await admin.call("POST", f"/v1/departments/{code}/tickets", {"phone": f"+2126000005{n:02d}"})
            await admin.call("POST", f"/v1/departments/{code}/call-next")
    conn = await asyncpg.connect(isolated.database_url, server_settings={"search_path": "scheduler"})
    try:
        tomorrow = datetime.now(UTC) + timedelta(days=1)
        async with conn.transaction():
            envelopes = await jobs.expire_stale_tickets(Tick(tomorrow, None, 0, 1), Queues(conn))
        ended = sorted((e.data.department, e.data.ticket) for e in envelopes if e.type == "ticket.ended")
        # OPD drops both; LAB keeps its waiting patient for tomorrow but not the one left at the counter.
        assert ended == [("LAB", "LAB-001"), ("OPD", "OPD-001"), ("OPD", "OPD-002")]
        left = await conn.fetch("SELECT label, state FROM tickets WHERE state IN ('waiting', 'called')")
        assert [tuple(r) for r in left] == [("LAB-002", "waiting")]
        async with conn.transaction():
            assert await jobs.expire_stale_tickets(Tick(tomorrow, None, 0, 1), Queues(conn)) == []
    finally:
        await conn.close()


async def test_the_estimated_wait_follows_recent_service_times(isolated):
    async with staff_api(isolated) as (admin, keys, _):
        await admin.call("POST", "/v1/departments", {**OPD, "default_service_s": 600})
        await admin.call("POST", "/v1/departments/OPD/open")
        _, first = await admin.call("POST", "/v1/departments/OPD/tickets", {"phone": "+212600000601"})
        _, second = await admin.call("POST", "/v1/departments/OPD/tickets", {"phone": "+212600000602"})
        assert (first["position"], second["position"]) == (1, 2)
        _, status = await admin.call("GET", "/v1/departments/OPD/status")
        assert status["estimated_wait_s"] == 3 * 600  # nothing served yet: the department's default
        await admin.call("POST", "/v1/departments/OPD/call-next")
        # Served two minutes after being called.
        conn = await asyncpg.connect(isolated.database_url, server_settings={"search_path": "scheduler"})
        try:
            await conn.execute("UPDATE tickets SET called_at = now() - interval '120 seconds' WHERE id = $1",
                               uuid.UUID(first["id"]))
        finally:
            await conn.close()
        await admin.call("POST", f"/v1/tickets/{first['id']}/served")
        _, status = await admin.call("GET", "/v1/departments/OPD/status")
        assert 119 <= status["average_service_s"] <= 125
        assert status["waiting"] == 1 and 2 * 119 <= status["estimated_wait_s"] <= 2 * 125


async def _wabus(isolated, *args: str) -> tuple[int, list[dict]]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "services.cli", *args, env=isolated.env(),
                                                stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    return proc.returncode, [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]


async def test_auto_close_by_hand_shows_then_does_what_the_closing_pass_would(isolated):
    async with staff_api(isolated) as (admin, keys, _), \
            Listener(isolated.amqp_url, "wabus.scheduler", SCHEDULER_EVENTS) as events:
        tomorrow = (datetime.now(ZoneInfo("Africa/Casablanca")) + timedelta(days=1)).isoweekday()
        for code in ("OPD", "LAB", "ER"):
            await admin.call("POST", "/v1/departments", {**OPD, "code": code})
            await admin.call("PUT", f"/v1/departments/{code}/schedule", {"hours": [
                {"weekday": tomorrow, "opens_at": "08:00", "closes_at": "12:00"}]})
        await admin.call("POST", "/v1/departments/OPD/open")
        await admin.call("POST", "/v1/departments/OPD/tickets", {"phone": "+212600000801"})
        # Overridden open until tomorrow: the closing pass leaves it alone.
        await admin.call("POST", "/v1/departments/ER/overrides", {
            "is_open": True, "ends_at": (datetime.now(UTC) + timedelta(days=1)).isoformat(), "reason": "on call"})
        await admin.call("POST", "/v1/departments/ER/open")

        code, dry = await _wabus(isolated, "queues", "auto-close", "--tenant", "clinic-a", "--dry-run")
        assert code == 0
        assert {(d["department"], d["action"]) for d in dry} == {("OPD", "would close"), ("ER", "stays open")}
        assert next(d for d in dry if d["department"] == "OPD")["waiting_tickets"] == 1
        _, status = await admin.call("GET", "/v1/departments/OPD/status")
        assert status["is_open"]

        code, done = await _wabus(isolated, "queues", "auto-close", "--department", "OPD")
        assert code == 0 and [(d["department"], d["action"]) for d in done] == [("OPD", "closed")]
        _, status = await admin.call("GET", "/v1/departments/OPD/status")
        assert not status["is_open"] and status["changed_by"] == "cli:auto-close"
        (closed,) = await eventually(lambda: _async(_of(events, "queue.closed")), what="closing published")
        assert closed["data"]["cancelled_tickets"] == 1
        code, _ = await _wabus(isolated, "queues", "auto-close", "--department", "NOPE")
        assert code == 1
