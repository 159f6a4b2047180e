"""A patient's WhatsApp message through every service and back to WhatsApp: gateway, processor,
scheduler and notifier on the real broker and database, the fake WAHA over loopback HTTP."""

from tests.integration.inbound.conftest import running
from tests.integration.inbound.test_processing import text
from tests.integration.scheduler.conftest import add_keys, scheduler
from tests.support import eventually

from .conftest import TENANT, notifier_with_fake

AMINA, BADR = "212600000601", "212600000602"


async def _sent(n, digits: str, fragment: str):
    return next((s for s in n.fake.sent if s.to == digits and fragment in s.text), None)


async def test_a_patient_joins_on_whatsapp_hears_back_and_is_called(isolated):
    settings = isolated.settings()
    async with notifier_with_fake(isolated) as n, running(settings, shards=2) as inbound, \
            scheduler(settings) as sched:
        keys = await add_keys(isolated.database_url, tenants=(TENANT,))
        admin = {"Authorization": f"Bearer {keys[TENANT]['admin']}"}
        async with inbound.http.post(f"{sched.url}/v1/departments", headers=admin, json={
                "code": "OPD", "name": "Consultations", "timezone": "Africa/Casablanca", "phone_region": "MA"}) as r:
            assert r.status == 201, await r.text()
        async with inbound.http.post(f"{sched.url}/v1/departments/OPD/open", json={}, headers=admin) as r:
            assert r.status == 200

        assert (await inbound.post("waha", text(AMINA, 1, "JOIN OPD")))[0] == 200
        assert (await inbound.post("waha", text(BADR, 1, "rejoindre opd")))[0] == 200
        issued = await eventually(lambda: _sent(n, AMINA, "OPD-001"), what="Amina's ticket on WhatsApp")
        assert issued.chat_id == f"{AMINA}@c.us" and issued.text.startswith("Hello")
        issued = await eventually(lambda: _sent(n, BADR, "OPD-002"), what="Badr's ticket on WhatsApp")
        assert issued.text.startswith("Bonjour")

        async with inbound.http.post(f"{sched.url}/v1/departments/OPD/call-next", json={"counter": "3"},
                                     headers=admin) as r:
            assert r.status == 200, await r.text()
        called = await eventually(lambda: _sent(n, AMINA, "it's your turn"), what="Amina called")
        assert "counter 3" in called.text

        # Badr still waits, Amina is at the counter: a broadcast to those waiting reaches Badr only.
        status, answer = await n.call("POST", "/v1/broadcasts", {"message": "Retard de 20 minutes",
                                                                 "recipients": [{"department": "OPD"}]})
        assert status == 202 and answer["queued_count"] == 1, answer
        await eventually(lambda: _sent(n, BADR, "Retard de 20 minutes"), what="broadcast to the waiting room")
        assert await _sent(n, AMINA, "Retard") is None
