"""A patient's WhatsApp message, through the gateway and processor, becomes a ticket in the scheduler."""

import json

from tests.integration.inbound.conftest import add_tenants, running
from tests.integration.inbound.test_processing import text
from tests.integration.inbound.test_stream import _sse_events
from tests.support import Listener, eventually

from .conftest import add_keys, rows, scheduler
from .test_queues import SCHEDULER_EVENTS, _of

CHAT = "212600000555"


async def _department(staff_url: str, http, admin_key: str, **extra) -> None:
    body = {"code": "OPD", "name": "Outpatients", "timezone": "Africa/Casablanca", "phone_region": "MA", **extra}
    async with http.post(f"{staff_url}/v1/departments", json=body,
                         headers={"Authorization": f"Bearer {admin_key}"}) as r:
        assert r.status == 201, await r.text()


async def test_join_opd_on_whatsapp_end_to_end(isolated):
    await add_tenants(isolated.database_url)
    settings = isolated.settings()
    async with running(settings) as inbound, scheduler(settings) as sched, \
            Listener(isolated.amqp_url, "wabus.scheduler", SCHEDULER_EVENTS) as events:
        keys = await add_keys(isolated.database_url, tenants=("clinic-waha",))
        admin = {"Authorization": f"Bearer {keys['clinic-waha']['admin']}"}
        await _department(sched.url, inbound.http, keys["clinic-waha"]["admin"])

        # Closed: refused, with the reason the notifier sends back.
        assert (await inbound.post("waha", text(CHAT, 1, "JOIN OPD")))[0] == 200
        (refused,) = await eventually(lambda: _ready(_of(events, "ticket.refused")), what="refusal")
        assert refused["tenant_id"] == "clinic-waha"
        assert refused["data"]["code"] == "queue_closed" and refused["data"]["patient"]["phone"] == f"+{CHAT}"
        assert refused["data"]["patient"]["language"] == "en"

        async with inbound.http.post(f"{sched.url}/v1/departments/OPD/open", json={}, headers=admin) as r:
            assert r.status == 200
        await inbound.post("waha", text(CHAT, 2, "rejoindre opd"))
        (issued,) = await eventually(lambda: _ready(_of(events, "ticket.issued")), what="ticket")
        data = issued["data"]
        assert (data["ticket"], data["position"], data["via"]) == ("OPD-001", 1, "whatsapp")
        assert data["patient"] == {"chat_id": f"{CHAT}@c.us", "phone": f"+{CHAT}", "name": data["patient"]["name"],
                                   "language": "fr"}
        # The chain reaches back to the webhook's event.
        assert issued["correlation_id"] and issued["causation_id"]

        # Joining again on WhatsApp: still one ticket, and the patient is told where they stand.
        await inbound.post("waha", text(CHAT, 3, "JOIN OPD"))
        await eventually(lambda: _ready(len(_of(events, "ticket.refused")) == 2), what="second refusal")
        assert _of(events, "ticket.refused")[1]["data"]["code"] == "already_in_queue"
        assert _of(events, "ticket.refused")[1]["data"]["position"] == 1

        await inbound.post("waha", text(CHAT, 4, "JOIN XRAY"))
        await eventually(lambda: _ready(len(_of(events, "ticket.refused")) == 3), what="unknown department")
        unknown = _of(events, "ticket.refused")[2]["data"]
        assert unknown["code"] == "unknown_department" and unknown["known_departments"] == ["OPD"]

        await inbound.post("waha", text(CHAT, 5, "position"))
        (position,) = await eventually(lambda: _ready(_of(events, "position.reported")), what="position")
        assert (position["data"]["ticket"], position["data"]["position"]) == ("OPD-001", 1)

        await inbound.post("waha", text(CHAT, 6, "leave"))
        (ended,) = await eventually(lambda: _ready(_of(events, "ticket.ended")), what="left")
        assert ended["data"]["outcome"] == "cancelled" and ended["data"]["reason"] == "left"
        states = await rows(isolated.database_url, "SELECT label, state FROM scheduler.tickets")
        assert [tuple(r) for r in states] == [("OPD-001", "cancelled")]

        # Our own echo of "JOIN OPD" is never a patient's request.
        await inbound.post("waha", text(CHAT, 7, "JOIN OPD", from_me=True))
        await inbound.post("waha", text(CHAT, 8, "subscribe OPD"))
        await eventually(lambda: _ready(_of(events, "opening.subscribed")), what="subscription")
        assert len(_of(events, "ticket.issued")) == 1


async def test_subscribers_hear_once_when_the_department_opens(isolated):
    await add_tenants(isolated.database_url)
    settings = isolated.settings()
    async with running(settings) as inbound, scheduler(settings) as sched, \
            Listener(isolated.amqp_url, "wabus.scheduler", SCHEDULER_EVENTS) as events:
        keys = await add_keys(isolated.database_url, tenants=("clinic-waha",))
        staff = {"Authorization": f"Bearer {keys['clinic-waha']['staff']}"}
        await _department(sched.url, inbound.http, keys["clinic-waha"]["admin"])
        for n, chat in enumerate(("212600000601", "212600000602")):
            await inbound.post("waha", text(chat, n, "SUBSCRIBE OPD"))
        await eventually(lambda: _ready(len(_of(events, "opening.subscribed")) == 2), what="subscriptions")
        for action in ("open", "close", "open"):
            async with inbound.http.post(f"{sched.url}/v1/departments/OPD/{action}", json={}, headers=staff) as r:
                assert r.status == 200
        opened = await eventually(lambda: _ready(len(_of(events, "queue.opened")) == 2 and _of(events, "queue.opened")),
                                  what="two openings")
        assert sorted(p["phone"] for p in opened[0]["data"]["subscribers"]) == ["+212600000601", "+212600000602"]
        assert opened[1]["data"]["subscribers"] == []


async def _ready(value):
    return value


async def test_a_waiting_room_screen_follows_its_department_over_sse_without_patient_details(isolated):
    await add_tenants(isolated.database_url)
    settings = isolated.settings()
    async with running(settings) as inbound, scheduler(settings) as sched:
        keys = await add_keys(isolated.database_url, tenants=("clinic-waha", "clinic-meta"),
                              schemas=("scheduler", "gateway"))
        staff = {"Authorization": f"Bearer {keys['clinic-waha']['staff']}"}
        await _department(sched.url, inbound.http, keys["clinic-waha"]["admin"])
        await _department(sched.url, inbound.http, keys["clinic-meta"]["admin"])
        screen = await inbound.http.get(
            f"{inbound.gateway_url}/v1/stream", params={"topics": "queue.status.changed,turn.reached",
                                                        "department": "OPD"},
            headers={"Authorization": f"Bearer {keys['clinic-waha']['viewer']}"})
        assert screen.status == 200
        # Another clinic's OPD must not show on this screen.
        other = {"Authorization": f"Bearer {keys['clinic-meta']['staff']}"}
        async with inbound.http.post(f"{sched.url}/v1/departments/OPD/open", json={}, headers=other) as r:
            assert r.status == 200
        for path, body in (("open", {}), ("tickets", {"phone": "+212600000701"}), ("call-next", {"counter": "2"})):
            async with inbound.http.post(f"{sched.url}/v1/departments/OPD/{path}", json=body, headers=staff) as r:
                assert r.status in (200, 201), await r.text()
        seen = await _sse_events(screen, 4)
        screen.close()
    assert [e["event"] for e in seen] == ["queue.status.changed", "queue.status.changed", "turn.reached",
                                          "queue.status.changed"]
    bodies = [json.loads(e["data"]) for e in seen]
    assert {b["tenant_id"] for b in bodies} == {"clinic-waha"}
    assert bodies[1]["data"]["waiting"] == 1
    assert (bodies[2]["data"]["ticket"], bodies[2]["data"]["counter"]) == ("OPD-001", "2")
    assert bodies[3]["data"]["current_ticket"] == "OPD-001" and bodies[3]["data"]["waiting"] == 0
    assert all("patient" not in b["data"] for b in bodies)
    assert "212600000701" not in json.dumps(bodies)
