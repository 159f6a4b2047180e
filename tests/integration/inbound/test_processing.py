"""The processor: order per chat across replicas, the bot's intents, and the conversation API."""

import asyncio
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aio_pika
import aiohttp
import asyncpg

from services.processor import app as processor_app
from services.processor import handlers as processor_handlers
from services.processor.repository import ProcessorUnitOfWork
from services.processor.settings import ProcessorSettings
from shared.events.catalog import Provider, WhatsAppMessage, WhatsAppMessageReceived, decode
from shared.events.envelope import Envelope
from shared.events.metrics import Metrics
from shared.events.migrate import migrate, migration_files
from shared.events.publisher import Publisher
from shared.events.runtime import serve
from tests.samples import sample_bytes
from tests.support import Listener

from .conftest import rows, running


def text(chat_digits: str, n: int, body: str, *, from_me: bool = False) -> bytes:
    message = json.loads(sample_bytes("waha/message.text.webjs.json"))
    message["payload"].update({
        "id": f"{'true' if from_me else 'false'}_{chat_digits}@c.us_M{chat_digits[-3:]}{n:04d}",
        "from": f"{chat_digits}@c.us", "to": "212500000000@c.us", "fromMe": from_me, "body": body,
        "timestamp": 1_776_000_000 + n,
    })
    return json.dumps(message).encode()


async def test_messages_of_a_chat_are_processed_in_order_with_two_processor_replicas(isolated, tenants):
    chats = ["212600000101", "212600000202", "212600000303", "212600000404"]
    settings = isolated.settings()
    spec = processor_app.build(settings, ProcessorSettings(port=0, shards=4))
    async with running(settings, processors=0) as inbound, \
            Listener(isolated.amqp_url, "wabus.processor", ["message.processed"]) as processed:
        first, second = serve(settings, spec), serve(settings, spec)
        await first.__aenter__()
        await second.__aenter__()
        for n in range(25):
            if n == 12:
                await first.__aexit__(None, None, None)  # one replica leaves mid-stream; the other takes over
            # Chats interleaved, all posted at once; within a chat, each post follows the previous.
            await asyncio.gather(*(inbound.post("waha", text(chat, n, f"message {n}")) for chat in chats))
        await processed.wait_for(100, timeout=60)
        await second.__aexit__(None, None, None)
    for chat in chats:
        stored = await rows(isolated.database_url, """
            SELECT m.text FROM processor.messages m JOIN processor.conversations c ON c.id = m.conversation_id
            WHERE c.chat_id = $1 ORDER BY m.processed_at""", f"{chat}@c.us")
        assert [r["text"] for r in stored] == [f"message {n}" for n in range(25)], chat
        published = [decode(m.body).data.message.text for m in processed.messages
                     if decode(m.body).data.message.chat_id == f"{chat}@c.us"]
        assert published == [f"message {n}" for n in range(25)], chat


async def test_the_bot_understands_patients_and_never_its_own_echoes(isolated, tenants):
    async with running(isolated.settings()) as inbound, \
            Listener(isolated.amqp_url, "wabus.processor", ["message.processed"]) as processed:
        await inbound.post("waha", text("212600000111", 1, "JOIN OPD"))
        await inbound.post("waha", text("212600000222", 2, "aide"))
        await inbound.post("waha", text("212600000333", 3, "انضم OPD"))
        await inbound.post("waha", text("212600000444", 4, "JOIN OPD", from_me=True))
        await inbound.post("waha", text("212600000555", 5, "is the doctor in?"))
        await processed.wait_for(5)
    by_chat = {decode(m.body).data.message.chat_id: decode(m.body).data for m in processed.messages}
    join = by_chat["212600000111@c.us"]
    assert join.intent.name == "join_queue" and join.intent.arguments == {"department": "OPD"}
    assert join.language == "en" and join.message.sender == "+212600000111" and join.reply_text is None
    help_ = by_chat["212600000222@c.us"]
    assert help_.intent.name == "help" and help_.language == "fr" and "REJOINDRE" in help_.reply_text
    assert by_chat["212600000333@c.us"].language == "ar"
    assert by_chat["212600000444@c.us"].intent is None  # our own message coming back
    assert by_chat["212600000444@c.us"].message.direction == "outbound"
    plain = by_chat["212600000555@c.us"]
    assert plain.intent is None and plain.reply_text is None and plain.processing_ms >= 0
    assert len({p.conversation_id for p in by_chat.values()}) == 5


async def test_a_message_the_gateway_no_longer_remembers_is_still_stored_and_processed_once(isolated, tenants):
    """The gateway forgets webhooks after its retention; a provider repeat after that reaches the
    processor as a new event, which must change nothing."""
    at = datetime.now(UTC)
    message = WhatsAppMessage(provider=Provider.WAHA, provider_message_id="false_212600000888@c.us_AGAIN1",
                              chat_id="212600000888@c.us", sender="+212600000888", text="STOP", sent_at=at)
    marker = message.model_copy(update={"provider_message_id": "false_212600000888@c.us_AFTER1", "text": "ok"})
    connection = await aio_pika.connect(isolated.amqp_url, timeout=10)
    try:
        async with running(isolated.settings()), \
                Listener(isolated.amqp_url, "wabus.processor", ["message.processed"]) as processed:
            publisher = await Publisher.open(connection, service="test", timeout_s=5, metrics=Metrics("test"))
            for m in (message, message, marker):  # two events, one message; then a marker in the same chat
                await publisher.publish(Envelope.new(WhatsAppMessageReceived(message=m), tenant_id="clinic-waha"))
            await processed.wait_for(2)
            await asyncio.sleep(0.5)  # a second copy would have come before the marker; give it time anyway
    finally:
        await connection.close()
    ids = [decode(m.body).data.message.provider_message_id for m in processed.messages]
    assert ids == [message.provider_message_id, marker.provider_message_id]
    stored = await rows(isolated.database_url, "SELECT count(*) FROM processor.messages WHERE provider_message_id"
                        " = $1", message.provider_message_id)
    assert stored[0][0] == 1


async def test_edits_revokes_and_reactions_change_the_message_they_point_at(isolated, tenants):
    original = json.loads(text("212600000777", 1, "JOIN CARDIO"))
    target = "M7770001"
    edit = {"event": "message.edited", "session": "default",
            "payload": {"id": "false_212600000777@c.us_EDIT1", "editedMessageId": target, "body": "JOIN OPD"}}
    reaction = {"event": "message.reaction", "session": "default", "payload": {
        "id": "false_212600000777@c.us_REACT1", "from": "212600000777@c.us", "fromMe": False, "timestamp": 1776000100,
        "reaction": {"text": "👍", "messageId": f"false_212600000777@c.us_{target}"}}}
    revoke = {"event": "message.revoked", "session": "default",
              "payload": {"after": {"id": "false_212600000777@c.us_REVOKE1"}, "revokedMessageId": target}}
    async with running(isolated.settings()) as inbound, \
            Listener(isolated.amqp_url, "wabus.processor", ["message.processed"]) as processed:
        await inbound.post("waha", json.dumps(edit).encode())  # the edit arrives before its message
        await inbound.post("waha", json.dumps(original).encode())
        await inbound.post("waha", json.dumps(reaction).encode())
        await processed.wait_for(3)
        (message,) = await rows(isolated.database_url,
                                "SELECT * FROM processor.messages WHERE provider_message_id = $1", target)
        assert message["text"] == "JOIN OPD" and message["edit_count"] == 1
        assert json.loads(message["reactions"]) == {"+212600000777": "👍"}
        await inbound.post("waha", json.dumps(revoke).encode())
        await processed.wait_for(4)
        (message,) = await rows(isolated.database_url,
                                "SELECT * FROM processor.messages WHERE provider_message_id = $1", target)
        assert message["revoked_at"] is not None


async def _key(isolated, tenant: str, role: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", "keys", "add", "--tenant", tenant, "--role", role,
        env=isolated.env(), stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0
    text_out = out.decode()
    return json.loads(text_out[text_out.index("{"):])["api_key"]


async def test_conversation_api_is_paginated_found_by_phone_and_scoped_to_the_tenant(isolated, tenants):
    own = await _key(isolated, "clinic-waha", "viewer")
    other = await _key(isolated, "clinic-meta", "admin")
    async with running(isolated.settings()) as inbound, \
            Listener(isolated.amqp_url, "wabus.processor", ["message.processed"]) as processed:
        for n in range(5):
            await inbound.post("waha", text("212600000888", n, f"hello {n}"))
        await inbound.post("waha", text("212600000999", 9, "other chat"))
        await processed.wait_for(6)
        async with aiohttp.ClientSession(inbound.processor_urls[0]) as http:
            async with http.get("/v1/conversations") as r:
                assert r.status == 401
            auth = {"Authorization": f"Bearer {own}"}
            async with http.get("/v1/conversations", headers=auth) as r:
                conversations = (await r.json())["items"]
                assert r.status == 200 and len(conversations) == 2
            async with http.get("/v1/conversations", params={"phone": "+212600000888"}, headers=auth) as r:
                (found,) = (await r.json())["items"]
                assert found["chat_id"] == "212600000888@c.us"
            async with http.get("/v1/conversations", params={"phone": "12"}, headers=auth) as r:
                assert r.status == 422 and (await r.json())["field"] == "phone"
            pages, cursor = [], None
            while True:
                params = {"limit": "2", **({"before": cursor} if cursor else {})}
                async with http.get(f"/v1/conversations/{found['id']}/messages", params=params, headers=auth) as r:
                    page = await r.json()
                pages.append([m["text"] for m in page["items"]])
                cursor = page["next"]
                if not cursor:
                    break
            assert pages == [["hello 4", "hello 3"], ["hello 2", "hello 1"], ["hello 0"]]
            # Another tenant's key sees nothing of this one: the id is simply not found.
            async with http.get(f"/v1/conversations/{found['id']}/messages",
                                headers={"Authorization": f"Bearer {other}"}) as r:
                assert r.status == 404
            async with http.get("/v1/conversations", headers={"Authorization": f"Bearer {other}"}) as r:
                assert (await r.json())["items"] == []


async def test_a_group_handled_at_once_ends_as_if_each_message_had_been_handled_alone(isolated):
    """The processor stores a group of messages with one statement: the outcome must be the one of
    handling them one by one, in order, also for edits and reactions that come before their
    message, a message repeated within the group, and conversations that several messages share."""
    conn = await asyncpg.connect(isolated.database_url)
    try:
        await migrate(conn, "processor", migration_files(Path(processor_handlers.__file__).parent / "migrations"))
        await conn.execute("SET search_path TO processor")
        together = _tricky_messages("together")
        for group in [*([e] for e in _tricky_messages("one-by-one")), together[:1], together[1:]]:
            async with conn.transaction():
                effects = await processor_handlers.process_messages(
                    group, ProcessorUnitOfWork(conn), clock=lambda: datetime.now(UTC))
            repeats = [e.data.message.text == "repeat" for e in group]
            assert [len(caused) for caused in effects] == [0 if r else 1 for r in repeats]
        outcome = {}
        for tenant in ("one-by-one", "together"):
            messages = await conn.fetch(
                "SELECT provider_message_id, text, edit_count, reactions, revoked_at IS NOT NULL AS revoked"
                " FROM messages WHERE tenant_id = $1 ORDER BY provider_message_id", tenant)
            conversations = await conn.fetch(
                "SELECT chat_id, phone, display_name, language, opted_out, created_at, last_message_at"
                " FROM conversations WHERE tenant_id = $1 ORDER BY chat_id", tenant)
            outcome[tenant] = ([dict(r) for r in messages], [dict(r) for r in conversations])
    finally:
        await conn.close()
    assert outcome["together"] == outcome["one-by-one"]
    messages, conversations = outcome["together"]
    target = next(m for m in messages if m["provider_message_id"] == "T1")
    # The edit stored in an earlier group, then the later one from this group: the last word wins.
    assert target["text"] == "second edit" and target["edit_count"] == 2 and target["revoked"]
    assert json.loads(target["reactions"]) == {"+212600000901": "👍"}
    assert len(messages) == 8 and len(conversations) == 2
    assert {c["chat_id"]: c["opted_out"] for c in conversations} == {"212600000901@c.us": False,
                                                                      "212600000902@c.us": True}


def _tricky_messages(tenant: str) -> list[Envelope]:
    base = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
    chat, other = "212600000901@c.us", "212600000902@c.us"

    def message(pid: str, seconds: int, **fields) -> Envelope:
        m = WhatsAppMessage(provider=Provider.WAHA, provider_message_id=pid, chat_id=fields.pop("chat", chat),
                            sender="+212600000901", sent_at=base + timedelta(seconds=seconds), **fields)
        return Envelope.new(WhatsAppMessageReceived(message=m), tenant_id=tenant)

    return [
        message("E1", 5, kind="edit", target_message_id="T1", text="first edit"),  # alone, before everything
        message("E2", 6, kind="edit", target_message_id="T1", text="second edit"),  # before its message, in the group
        message("R1", 7, kind="reaction", target_message_id="T1", reaction="👍"),
        message("T1", 0, text="JOIN CARDIO", sender_name="Amina"),
        message("T1", 0, text="repeat"),  # the provider sent it again, within the same group
        message("X1", 8, text="STOP", chat=other, sender_name="Omar"),
        message("V1", 9, kind="revoke", target_message_id="T1"),  # after its message, in the same group
        message("P1", 10, text="hello", chat=other),
        message("P2", 11, text="START", chat=chat),
    ]
