"""Real provider samples through the real gateway, broker, database and processor."""

import asyncio
import json

import asyncpg
from prometheus_client.parser import text_string_to_metric_families

from services.gateway.domain import Tenant
from services.gateway.repository import add_tenant
from shared.events.catalog import Provider, decode
from tests.samples import as_posted, sample_bytes, session_of, webhook_samples
from tests.support import Listener, eventually

from .conftest import META_VERIFY_TOKEN, SECRETS, SESSIONS, TENANTS, rows, running

# What each sample must become: the events subscribers see, by routing key, and the provider id.
EXPECTED = {
    "baileys/messages.update.status.json": ("whatsapp.message.ack", "3EB015B6A7698E6BEB009B"),
    "baileys/messages.upsert.revoke.partial.json": ("message.processed", "BAE58CF444A19CFE"),
    "evolution/connection.update.close.json": ("whatsapp.session.status", None),
    "evolution/messages.update.json": ("message.processed", "update:A5561E44C2A63682E4295B52F484C14E"),
    "evolution/messages.upsert.json": ("message.processed", "4DA1D8D1B5B0139AC8C44B44B8CF5A93"),
    "meta/errors.rate-limit.json": (None, None),
    "meta/messages.text.json": ("message.processed", "ABGGFlA5Fpa"),
    "meta/statuses.delivered.json": ("whatsapp.message.ack",
                                     "wamid.HBgNNTUxNjk5MjMxODIyMhUCABEYEjgxQkVFRDVBQTVDODFDOTg3MQA="),
    "meta/statuses.sent.json": ("whatsapp.message.ack",
                                "wamid.HBgNNTUxNjk5MjMxODIyMhUCABEYEjgxQkVFRDVBQTVDODFDOTg3MQA="),
    "waha/envelope.structure.json": (None, None),
    "waha/message.ack.group.json": ("whatsapp.message.ack", "4CC5EDD64BC22EBA6D639F2AF571346C"),
    "waha/message.ack.json": ("whatsapp.message.ack", "4CC5EDD64BC22EBA6D639F2AF571346C"),
    "waha/message.any.lid-reply.partial.json": ("message.processed", "A58ABF7E57AFAC708DE26939A11F9292"),
    "waha/message.edited.partial.json": ("message.processed", "BBBBBBBBBBBBBBBBBBBBB["),
    "waha/message.group.json": ("message.processed", "123@g.us"),
    "waha/message.media.json": ("message.processed", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
    "waha/message.noweb.call-stub.json": (None, None),
    "waha/message.reaction.json": ("message.processed", "11111111111111111111111111111111"),
    "waha/message.reply.json": ("message.processed", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
    "waha/message.revoked.partial.json": ("message.processed", "BBBBBBBBBBBBBBBBBBBBB["),
    "waha/message.text.webjs.json": ("message.processed", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
    "waha/session.status.json": ("whatsapp.session.status", None),
}


def test_the_table_covers_every_sample():
    assert set(EXPECTED) == set(webhook_samples())


async def test_every_sample_becomes_the_event_its_subscribers_expect(isolated):
    # One tenant per sample, on the sample's own session: several samples reuse the same message id,
    # which is a repeat per tenant.
    conn = await asyncpg.connect(isolated.database_url, server_settings={"search_path": "gateway"})
    tenants = {}
    for i, name in enumerate(sorted(EXPECTED)):
        provider = Provider(as_posted(name)[0])
        tenants[name] = f"sample-{i:02d}"
        await add_tenant(conn, Tenant(tenants[name], provider, session_of(name), SECRETS[provider], None, "MA", "fr"))
    await conn.close()

    settings = isolated.settings()
    async with running(settings) as inbound, \
            Listener(isolated.amqp_url, "wabus.processor", ["message.processed"]) as processed, \
            Listener(isolated.amqp_url, "wabus.gateway", ["whatsapp.message.ack", "whatsapp.session.status"]) as other:
        for name, (routing_key, _) in EXPECTED.items():
            provider, body = as_posted(name)
            status, answer, _ = await inbound.post(provider, body, tenant=tenants[name])
            assert status == 200, (name, answer)
            assert (answer["accepted"] == 1) == (routing_key is not None), (name, answer)
            if routing_key is None:
                assert answer["ignored"], name
        wanted = sum(1 for key, _ in EXPECTED.values() if key == "message.processed")
        await processed.wait_for(wanted, timeout=30)
        await other.wait_for(sum(1 for key, _ in EXPECTED.values() if key and key != "message.processed"))

    seen = {}
    for message in [*processed.messages, *other.messages]:
        envelope = decode(message.body)
        data = envelope.data
        provider_id = data.message.provider_message_id if hasattr(data, "message") else getattr(
            data, "provider_message_id", None)
        seen[envelope.tenant_id] = (message.routing_key, provider_id)
    for name, expected in EXPECTED.items():
        if expected[0] is not None:
            assert seen[tenants[name]] == expected, name
    # Nothing more than expected went out.
    assert len(processed.messages) + len(other.messages) == sum(1 for k, _ in EXPECTED.values() if k)


async def test_a_repeat_sequential_or_concurrent_is_answered_2xx_and_makes_no_second_event(isolated, tenants):
    body = sample_bytes("waha/message.text.webjs.json")
    marker = json.loads(body)
    marker["payload"]["id"] = "true_11111111111@c.us_MARKER"
    marker_body = json.dumps(marker).encode()
    async with running(isolated.settings()) as inbound, \
            Listener(isolated.amqp_url, "wabus.processor", ["message.processed"]) as processed:
        first = await inbound.post("waha", body)
        again = await inbound.post("waha", body)
        together = await asyncio.gather(*(inbound.post("waha", body) for _ in range(8)))
        assert first[1]["accepted"] == 1 and again[1]["duplicates"] == 1
        assert all(s == 200 and a["duplicates"] == 1 for s, a, _ in together)
        # The marker follows in the same chat, so any second copy would have arrived before it.
        await inbound.post("waha", marker_body)
        await eventually(lambda: _arrived(processed, "MARKER"), what="marker processed")
    ids = [decode(m.body).data.message.provider_message_id for m in processed.messages]
    assert ids == ["AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "MARKER"]


async def test_concurrent_first_copies_make_one_event(isolated, tenants):
    body = sample_bytes("meta/messages.text.json")
    async with running(isolated.settings()) as inbound, \
            Listener(isolated.amqp_url, "wabus.processor", ["message.processed"]) as processed:
        answers = await asyncio.gather(*(inbound.post("meta", body) for _ in range(10)))
        assert sum(a["accepted"] for _, a, _ in answers) == 1
        assert sum(a["duplicates"] for _, a, _ in answers) == 9
        await processed.wait_for(1)
    stored = await rows(isolated.database_url, "SELECT count(*) FROM processor.messages")
    assert stored[0][0] == 1


async def test_one_lid_sender_told_several_times_at_once_is_accepted(isolated, tenants):
    # A message and its message.any copy, and the sender's next messages, all naming the LID's phone,
    # arrive together and share one commit: the phone is remembered once, nothing fails.
    sample = json.loads(sample_bytes("waha/message.any.lid-reply.partial.json"))
    bodies = []
    for n in range(6):
        for event in ("message", "message.any"):
            copy = json.loads(json.dumps(sample))
            copy["event"] = event
            copy["session"] = SESSIONS[Provider.WAHA]  # the tenant's; the sample was captured on another
            copy["payload"]["id"] = f"false_72318944542853@lid_LID{n}"
            copy["payload"]["_data"] = {"key": {"remoteJidAlt": "212600000555@s.whatsapp.net"}}
            bodies.append(json.dumps(copy).encode())
    async with running(isolated.settings()) as inbound, \
            Listener(isolated.amqp_url, "wabus.processor", ["message.processed"]) as processed:
        answers = await asyncio.gather(*(inbound.post("waha", body) for body in bodies))
        assert [status for status, _, _ in answers] == [200] * len(bodies), answers
        assert sum(a["accepted"] for _, a, _ in answers) == 6
        await processed.wait_for(6)
    senders = {decode(m.body).data.message.sender for m in processed.messages}
    assert senders == {"+212600000555"}
    known = await rows(isolated.database_url, "SELECT lid, phone FROM gateway.lid_phones")
    assert [tuple(r) for r in known] == [("72318944542853@lid", "+212600000555")]


async def test_wrong_or_missing_signatures_are_401_and_keep_nothing(isolated, tenants):
    body = sample_bytes("waha/message.text.webjs.json")
    meta = sample_bytes("meta/messages.text.json")
    evolution = sample_bytes("evolution/messages.upsert.json")
    async with running(isolated.settings()) as inbound:
        cases = [
            await inbound.post("waha", body, sign=False),
            await inbound.post("waha", body, sign=False, headers={"X-Webhook-Hmac": "ab" * 64}),
            await inbound.post("waha", body, headers={"X-Webhook-Timestamp": "1000"}),  # replayed, years old
            await inbound.post("meta", meta, sign=False),
            await inbound.post("meta", meta, sign=False, headers={"X-Hub-Signature-256": "sha256=" + "0" * 64}),
            await inbound.post("evolution", evolution, sign=False),
            await inbound.post("evolution", evolution, sign=False, headers={"X-Webhook-Token": "guess"}),
        ]
    for status, answer, _ in cases:
        assert status == 401 and answer["error"] == "unauthenticated" and answer["reason"]
    assert (await rows(isolated.database_url, "SELECT count(*) FROM gateway.received_webhooks"))[0][0] == 0
    assert (await rows(isolated.database_url, "SELECT count(*) FROM gateway.outbox"))[0][0] == 0


async def test_bad_input_gets_a_clear_4xx_and_leaves_no_row(isolated, tenants):
    body = sample_bytes("waha/message.text.webjs.json")
    head, tail = b'{"event":"message","session":"default","payload":"', b'"}'
    too_big = head + b"x" * (1024 * 1024 + 1 - len(head) - len(tail)) + tail
    assert len(too_big) == 1024 * 1024 + 1
    wrong_shape = json.dumps({"event": "message", "session": "default", "payload": {"from": "1@c.us"}}).encode()
    async with running(isolated.settings()) as inbound:
        status, answer, _ = await inbound.post("waha", too_big)
        assert status == 413 and answer["limit_bytes"] == 1024 * 1024
        status, answer, _ = await inbound.post("waha", b"{not json")
        assert status == 400 and answer["error"] == "body is not JSON"
        status, answer, _ = await inbound.post("waha", body, content_type="text/plain")
        assert status == 415
        status, answer, _ = await inbound.post("waha", wrong_shape)
        assert status == 422 and answer["field"] == "payload.id" and answer["reason"] == "Field required"
        status, answer, _ = await inbound.post("waha", body, tenant="no-such-clinic")
        assert status == 404 and answer["tenant"] == "no-such-clinic"
        status, answer, _ = await inbound.post("meta", body, tenant=TENANTS[Provider.WAHA])
        assert status == 404  # a WAHA tenant is not reachable through the Meta endpoint
        async with inbound.http.post(f"{inbound.gateway_url}/webhooks/telegram/clinic-waha", data=body,
                                     headers={"Content-Type": "application/json"}) as response:
            assert response.status == 404 and "waha" in (await response.json())["providers"]
    assert (await rows(isolated.database_url, "SELECT count(*) FROM gateway.received_webhooks"))[0][0] == 0
    assert (await rows(isolated.database_url, "SELECT count(*) FROM gateway.outbox"))[0][0] == 0


async def test_a_webhook_for_another_session_or_instance_is_403_and_keeps_nothing(isolated, tenants):
    # One WAHA or Evolution server hosting two clinics, its server-wide webhook pointed at this clinic's URL:
    # the other clinic's patients must not land here.
    waha = json.loads(sample_bytes("waha/message.text.webjs.json"))
    evolution = json.loads(sample_bytes("evolution/messages.upsert.json"))
    assert waha["session"] == SESSIONS[Provider.WAHA] and evolution["instance"] != SESSIONS[Provider.EVOLUTION]
    async with running(isolated.settings()) as inbound:
        for session in ("clinic-b", "Default"):  # names are case-sensitive in WAHA
            status, answer, _ = await inbound.post("waha", json.dumps({**waha, "session": session}).encode())
            assert status == 403 and answer["error"] == "not this tenant's session", answer
            assert answer["field"] == "session" and answer["reason"] == f"session {session!r} is not this tenant's"
        status, answer, _ = await inbound.post("evolution", json.dumps(evolution).encode())
        assert status == 403 and answer["field"] == "instance", answer
        assert answer["reason"] == "instance '5535********' is not this tenant's"
        # The signature comes first: unsigned, it is a 401 whatever session it names.
        status, _, _ = await inbound.post("waha", json.dumps({**waha, "session": "clinic-b"}).encode(), sign=False)
        assert status == 401
        counted = await _counted(inbound, "rejected_403")
    assert counted == {"waha": 2.0, "evolution": 1.0}
    for table in ("received_webhooks", "outbox", "inbox", "lid_phones"):
        assert (await rows(isolated.database_url, f"SELECT count(*) FROM gateway.{table}"))[0][0] == 0, table


async def test_meta_keeps_the_tenants_number_and_skips_another_numbers_changes(isolated, tenants):
    # Meta posts every number of an app to the app's one callback, one POST possibly carrying several.
    body = json.loads(sample_bytes("meta/messages.text.json"))
    (own,) = body["entry"][0]["changes"]
    assert own["value"]["metadata"]["phone_number_id"] == SESSIONS[Provider.META]
    other = json.loads(json.dumps(own))
    other["value"]["metadata"]["phone_number_id"] = "999000111"
    other["value"]["messages"][0]["id"] = "wamid.OTHER"
    body["entry"][0]["changes"].append(other)
    marker = json.loads(sample_bytes("meta/messages.text.json"))
    marker["entry"][0]["changes"][0]["value"]["messages"][0]["id"] = "wamid.MARKER"
    async with running(isolated.settings()) as inbound, \
            Listener(isolated.amqp_url, "wabus.gateway", ["whatsapp.message.received"]) as received:
        status, answer, _ = await inbound.post("meta", json.dumps(body).encode())
        assert status == 200 and answer["accepted"] == 1 and answer["duplicates"] == 0, answer
        assert answer["ignored"] == [{"kind": "messages", "reason": "phone_number_id '999000111' is not this tenant's"}]
        # The gateway publishes in the order it kept: any event of the other number would come before the marker.
        assert (await inbound.post("meta", json.dumps(marker).encode()))[0] == 200
        await eventually(lambda: _arrived(received, "wamid.MARKER"), what="marker published")
        counted = (await _counted(inbound, "accepted"), await _counted(inbound, "ignored"))
    published = [decode(m.body).data.message.provider_message_id for m in received.events()]
    assert published == ["ABGGFlA5Fpa", "wamid.MARKER"]
    assert counted == ({"meta": 2.0}, {"meta": 1.0})
    kept = await rows(isolated.database_url, "SELECT dedupe_key FROM gateway.received_webhooks ORDER BY dedupe_key")
    assert [r["dedupe_key"] for r in kept] == ["msg:ABGGFlA5Fpa", "msg:wamid.MARKER"]


async def _counted(inbound, outcome: str) -> dict[str, float]:
    """wabus_webhooks_total of one outcome, by provider."""
    async with inbound.http.get(f"{inbound.gateway_url}/metrics") as r:
        text = await r.text()
    return {s.labels["provider"]: s.value for f in text_string_to_metric_families(text) if f.name == "wabus_webhooks"
            for s in f.samples if s.name == "wabus_webhooks_total" and s.labels["outcome"] == outcome}


async def test_meta_subscription_handshake(isolated, tenants):
    async with running(isolated.settings()) as inbound:
        url = f"{inbound.gateway_url}/webhooks/meta/{TENANTS[Provider.META]}"
        query = {"hub.mode": "subscribe", "hub.challenge": "1158201444", "hub.verify_token": META_VERIFY_TOKEN}
        async with inbound.http.get(url, params=query) as response:
            assert response.status == 200 and await response.text() == "1158201444"
        async with inbound.http.get(url, params={**query, "hub.verify_token": "wrong"}) as response:
            assert response.status == 403


async def _arrived(listener, provider_id: str) -> bool:
    return any(decode(m.body).data.message.provider_message_id == provider_id for m in listener.messages)
