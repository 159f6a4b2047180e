"""Queues through the staff API, with the events they publish, on the real broker and database."""

import asyncio
import json

import asyncpg

from services.scheduler.queues import Queues
from shared.events.catalog import Patient
from tests.support import Listener, eventually

from .conftest import LAB, OPD, rows, staff_api

SCHEDULER_EVENTS = ["queue.#", "ticket.#", "turn.#", "position.reported", "opening.subscribed"]


def _of(listener: Listener, event_type: str) -> list[dict]:
    return [json.loads(m.body) for m in listener.messages if m.type == event_type]


async def test_open_publishes_queue_opened_once_and_the_status_persists(isolated):
    async with staff_api(isolated) as (admin, keys, _), \
            Listener(isolated.amqp_url, "wabus.scheduler", SCHEDULER_EVENTS) as events:
        assert (await admin.call("POST", "/v1/departments", OPD))[0] == 201
        staff = admin.as_(keys["clinic-a"]["staff"])
        status, body = await staff.call("POST", "/v1/departments/OPD/open",
                                        {"reason": "morning shift", "message": "Bienvenue"})
        assert status == 200 and body["is_open"] and body["changed"]
        status, again = await staff.call("POST", "/v1/departments/opd/open", {"reason": "double click"})
        assert status == 200 and again["is_open"] and not again["changed"]
        await events.wait_for(2)
        await asyncio.sleep(0.5)
        (opened,) = _of(events, "queue.opened")
        assert opened["tenant_id"] == "clinic-a"
        assert opened["data"]["department"] == "OPD" and opened["data"]["reason"] == "morning shift"
        assert opened["data"]["opened_by"].startswith("key:")
        (changed,) = _of(events, "queue.status.changed")
        assert changed["data"]["is_open"] and changed["data"]["waiting"] == 0

    # A restart keeps the status, and the audit log says who did what and why.
    async with staff_api(isolated) as (admin, keys, _):
        viewer = admin.as_(keys["clinic-a"]["viewer"])
        status, body = await viewer.call("GET", "/v1/departments/OPD/status")
        assert status == 200 and body["is_open"] and body["message"] == "Bienvenue"
        status, audit = await viewer.call("GET", "/v1/audit", department="OPD")
        actions = [(a["action"], a["reason"]) for a in audit["items"]]
        assert actions[0] == ("open", "morning shift") and ("create_department", None) in actions
        assert audit["items"][0]["before"]["is_open"] is False and audit["items"][0]["after"]["is_open"] is True


async def test_tickets_numbered_positioned_called_and_almost_your_turn(isolated):
    async with staff_api(isolated) as (admin, keys, _), \
            Listener(isolated.amqp_url, "wabus.scheduler", SCHEDULER_EVENTS) as events:
        await admin.call("POST", "/v1/departments", {**OPD, "almost_position": 2})
        staff = admin.as_(keys["clinic-a"]["staff"])
        await staff.call("POST", "/v1/departments/OPD/open")
        tickets = []
        for n in range(5):
            status, ticket = await staff.call("POST", "/v1/departments/OPD/tickets",
                                              {"phone": f"06939552{n:02d}", "name": f"P{n}", "language": "fr"})
            assert status == 201, ticket
            tickets.append(ticket)
        assert [t["ticket"] for t in tickets] == ["OPD-001", "OPD-002", "OPD-003", "OPD-004", "OPD-005"]
        assert [t["position"] for t in tickets] == [1, 2, 3, 4, 5]
        assert tickets[0]["phone"] == "+212693955200" and tickets[0]["chat_id"] == "212693955200@c.us"

        status, called = await staff.call("POST", "/v1/departments/OPD/call-next", {"counter": "3"})
        assert status == 200 and called["ticket"] == "OPD-001" and called["state"] == "called"
        # OPD-003 moved to 2nd place: the almost-your-turn position of this department.
        reached = await eventually(lambda: _async(_of(events, "turn.reached")), what="turn.reached")
        assert [(e["data"]["ticket"], e["data"]["counter"]) for e in reached] == [("OPD-001", "3")]
        assert reached[0]["data"]["patient"]["phone"] == "+212693955200"
        approaching = await eventually(lambda: _async(_of(events, "turn.approaching")), what="turn.approaching")
        assert [(e["data"]["ticket"], e["data"]["position"]) for e in approaching] == [("OPD-003", 2)]

        # The one waiting at the head leaves: OPD-004 is now 2nd, and told so once.
        await staff.call("POST", f"/v1/tickets/{tickets[1]['id']}/cancel", {"reason": "went home"})
        await eventually(lambda: _async(len(_of(events, "turn.approaching")) == 2), what="second approaching")
        assert _of(events, "turn.approaching")[1]["data"]["ticket"] == "OPD-004"

        status, served = await staff.call("POST", f"/v1/tickets/{called['id']}/served")
        assert status == 200 and served["state"] == "served"
        status, conflict = await staff.call("POST", f"/v1/tickets/{called['id']}/served")
        assert status == 409 and "served" in conflict["reason"]
        status, recalled = await staff.call("POST", f"/v1/tickets/{tickets[2]['id']}/recall")
        assert status == 409  # waiting, not called

        status, moved = await staff.call("POST", f"/v1/tickets/{tickets[4]['id']}/transfer",
                                         {"department": "LAB"})
        assert status == 422 and moved["field"] == "department"
        await admin.call("POST", "/v1/departments", LAB)
        status, moved = await staff.call("POST", f"/v1/tickets/{tickets[4]['id']}/transfer",
                                         {"department": "LAB", "reason": "blood test first"})
        assert status == 200 and moved["state"] == "transferred"
        status, lab = await staff.call("GET", "/v1/departments/LAB/tickets")
        assert [(t["ticket"], t["position"], t["phone"]) for t in lab["items"]] == [("LAB-001", 1, "+212693955204")]

        status, listing = await staff.call("GET", "/v1/departments/OPD/tickets", state="waiting")
        assert [(t["ticket"], t["position"]) for t in listing["items"]] == [("OPD-003", 1), ("OPD-004", 2)]
        status, body = await staff.call("GET", "/v1/departments/OPD/status")
        assert body["waiting"] == 2 and body["current_ticket"] == "OPD-001"


async def test_the_same_patient_joining_twice_even_at_once_holds_one_ticket(isolated):
    async with staff_api(isolated) as (admin, keys, _):
        await admin.call("POST", "/v1/departments", OPD)
        staff = admin.as_(keys["clinic-a"]["staff"])
        await staff.call("POST", "/v1/departments/OPD/open")
        body = {"phone": "+212693955230"}
        answers = await asyncio.gather(*(staff.call("POST", "/v1/departments/OPD/tickets", body) for _ in range(6)))
        statuses = sorted(status for status, _ in answers)
        assert statuses == [201, 409, 409, 409, 409, 409]
        refused = [b for s, b in answers if s == 409]
        assert all(r["code"] == "already_in_queue" and r["ticket"] == "OPD-001" for r in refused)
        # The national form of the same number is the same patient.
        status, again = await staff.call("POST", "/v1/departments/OPD/tickets", {"phone": "0693955230"})
        assert status == 409 and again["position"] == 1
        (count,) = await rows(isolated.database_url, "SELECT count(*) FROM scheduler.tickets")
        assert count[0] == 1


async def test_closing_cancels_or_carries_over_waiting_tickets(isolated):
    async with staff_api(isolated) as (admin, keys, _), \
            Listener(isolated.amqp_url, "wabus.scheduler", SCHEDULER_EVENTS) as events:
        await admin.call("POST", "/v1/departments", OPD)
        await admin.call("POST", "/v1/departments", {**LAB, "on_close": "carry_over"})
        staff = admin.as_(keys["clinic-a"]["staff"])
        for code in ("OPD", "LAB"):
            await staff.call("POST", f"/v1/departments/{code}/open")
            for n in range(2):
                await staff.call("POST", f"/v1/departments/{code}/tickets", {"phone": f"+2126939552{n:02d}"})
        status, closed = await staff.call("POST", "/v1/departments/OPD/close", {"reason": "end of shift"})
        assert status == 200 and not closed["is_open"] and closed["waiting"] == 0
        status, closed = await staff.call("POST", "/v1/departments/LAB/close")
        assert closed["waiting"] == 2
        status, refused = await staff.call("POST", "/v1/departments/OPD/tickets", {"phone": "+212693955299"})
        assert status == 409 and refused["code"] == "queue_closed"
        await eventually(lambda: _async(len(_of(events, "queue.closed")) == 2), what="two closings")
        by_department = {e["data"]["department"]: e["data"] for e in _of(events, "queue.closed")}
        assert (by_department["OPD"]["cancelled_tickets"], by_department["OPD"]["carried_over_tickets"]) == (2, 0)
        assert (by_department["LAB"]["cancelled_tickets"], by_department["LAB"]["carried_over_tickets"]) == (0, 2)
        await eventually(lambda: _async(len(_of(events, "ticket.ended")) == 2), what="cancelled tickets")
        assert {e["data"]["reason"] for e in _of(events, "ticket.ended")} == {"queue_closed"}


async def _async(value):
    return value


async def test_an_opening_that_waited_for_a_subscription_is_stamped_after_it(isolated):
    """Otherwise a subscription it already told could look newer than the opening downstream."""
    async with staff_api(isolated) as (admin, _, _):
        assert (await admin.call("POST", "/v1/departments", OPD))[0] == 201
    first, second = [await asyncpg.connect(isolated.database_url, server_settings={"search_path": "scheduler"})
                     for _ in range(2)]
    try:
        opening = Queues(second)  # its instant is taken now, before it waits for the lock
        subscription = Queues(first)
        dept = await subscription.department("clinic-a", "OPD")
        patient = Patient(chat_id="212600000001@c.us")
        holding = first.transaction()
        await holding.start()
        await subscription.subscribe(dept, patient)  # holds the department's lock until it commits

        async def open_queue():
            async with second.transaction():
                return await opening.open(dept, actor="nurse")

        opened_task = asyncio.create_task(open_queue())
        await asyncio.sleep(0.3)
        assert not opened_task.done()  # waiting for the subscription's lock
        await holding.commit()
        opened = (await asyncio.wait_for(opened_task, timeout=10))[0]
    finally:
        await asyncio.gather(first.close(), second.close())
    assert [p.chat_id for p in opened.subscribers] == [patient.chat_id]
    assert opened.opened_at > subscription.now
