"""Notifications from events to the fake provider: once, with the right text, and receipts after."""

import asyncio
import time
from datetime import UTC, datetime, timedelta

import asyncpg

from services.notifier.sending import _DUE_SESSIONS, _QUEUED_SESSIONS
from shared.events.catalog import Patient, TurnReached
from shared.events.envelope import Envelope
from tests.integration.runtime.conftest import publisher
from tests.support import eventually

from .conftest import TENANT, notifier_with_fake


def turn(phone_digits: str = "212693955230", name: str = "Amina", language: str = "fr") -> Envelope:
    patient = Patient(chat_id=f"{phone_digits}@c.us", phone=f"+{phone_digits}", name=name, language=language)
    return Envelope.new(TurnReached(department="OPD", department_name="Consultations", ticket="OPD-012",
                                    ticket_id="t-12", patient=patient, counter="2"), tenant_id=TENANT)


async def _status(n, cause: str) -> str | None:
    rows = await n.rows("SELECT status FROM notifications WHERE cause = $1", cause)
    return rows[0]["status"] if rows else None


async def test_turn_reached_sends_exactly_one_text_and_its_receipts_arrive(isolated):
    async with notifier_with_fake(isolated) as n, publisher(isolated.amqp_url) as pub:
        envelope = turn()
        await pub.publish(envelope)
        await pub.publish(envelope)  # redelivered: still one message
        sent = await n.fake.next_sent()
        assert sent.chat_id == "212693955230@c.us" and sent.session == "default"
        assert sent.text == "Amina, c'est votre tour ! Ticket OPD-012, Consultations, guichet 2."
        # The fake acks server then delivered through the gateway, as WAHA does.
        await eventually(lambda: _is(n, str(envelope.id), "delivered"), what="delivered")
        await asyncio.sleep(0.5)
        assert len(n.fake.sent) == 1
        (row,) = await n.rows("SELECT * FROM notifications")
        assert row["provider_message_id"] == sent.provider_message_id and row["attempts"] == 1
        assert row["sent_at"] and row["delivered_at"] and row["kind"] == "turn_reached"


async def _is(n, cause: str, status: str) -> bool:
    return await _status(n, cause) == status


async def test_a_timed_out_send_is_reconciled_not_sent_twice(isolated):
    async with notifier_with_fake(isolated) as n, publisher(isolated.amqp_url) as pub:
        n.fake.hang_next(1, hang_s=5)  # accepted, then no answer within the send timeout
        envelope = turn()
        await pub.publish(envelope)
        # The fake acks as soon as it has the message; those acks wait until the send is settled.
        await eventually(lambda: _in(n, str(envelope.id), ("sent", "delivered")), timeout=20, what="reconciled")
        await asyncio.sleep(1.0)
        assert len(n.fake.sent) == 1
        (row,) = await n.rows("SELECT provider_message_id FROM notifications")
        assert row["provider_message_id"] == n.fake.sent[0].provider_message_id
        async with n.http.get(n.url + "/metrics") as r:
            assert 'wabus_notifier_unknown_outcomes_total{resolution="found_sent"} 1.0' in await r.text()


async def _in(n, cause: str, statuses) -> bool:
    return await _status(n, cause) in statuses


async def test_a_rate_limited_send_waits_for_retry_after_then_goes_once(isolated):
    async with notifier_with_fake(isolated) as n, publisher(isolated.amqp_url) as pub:
        n.fake.rate_limit(1, retry_after_s=1.5)
        envelope = turn()
        started = asyncio.get_running_loop().time()
        await pub.publish(envelope)
        await n.fake.next_sent(timeout=15)
        assert asyncio.get_running_loop().time() - started >= 1.4
        assert len(n.fake.sent) == 1
        (row,) = await n.rows("SELECT attempts FROM notifications")
        assert row["attempts"] == 2


async def test_a_disconnected_session_holds_messages_without_spending_attempts(isolated):
    async with notifier_with_fake(isolated) as n, publisher(isolated.amqp_url) as pub:
        n.fake.disconnect("default")
        envelopes = [turn(f"21269395520{i}") for i in range(3)]
        for e in envelopes:
            await pub.publish(e)
        await eventually(lambda: _session(n, False), what="session held")
        await asyncio.sleep(1.5)
        assert n.fake.sent == []
        rows = await n.rows("SELECT status, attempts FROM notifications")
        assert len(rows) == 3 and all(r["status"] == "queued" and r["attempts"] == 0 for r in rows)
        n.fake.connect("default")
        for _ in envelopes:
            await n.fake.next_sent(timeout=15)
        await asyncio.sleep(0.5)
        assert sorted(s.chat_id for s in n.fake.sent) == sorted(e.data.patient.chat_id for e in envelopes)


async def _session(n, can_send: bool) -> bool:
    rows = await n.rows("SELECT can_send FROM sessions WHERE session = 'default'")
    return bool(rows) and rows[0]["can_send"] is can_send


async def test_acks_out_of_order_end_in_the_right_state(isolated):
    async with notifier_with_fake(isolated, provider="log") as n, publisher(isolated.amqp_url) as pub:
        envelope = turn()
        await pub.publish(envelope)
        await eventually(lambda: _is(n, str(envelope.id), "sent"), what="sent")
        (row,) = await n.rows("SELECT provider_message_id FROM notifications")
        message_id = row["provider_message_id"]
        from shared.events.catalog import AckStatus, Provider, WhatsAppMessageAck
        from shared.events.envelope import Envelope as E

        def ack(status):
            return E.new(WhatsAppMessageAck(provider=Provider.WAHA, provider_message_id=message_id, status=status,
                                            at="2026-11-22T10:00:00Z"), tenant_id=TENANT)

        for status in (AckStatus.READ, AckStatus.DELIVERED, AckStatus.SERVER, AckStatus.FAILED):
            await pub.publish(ack(status))
        await eventually(lambda: _is(n, str(envelope.id), "read"), what="read")
        await asyncio.sleep(1.0)
        (row,) = await n.rows("SELECT status, delivered_at, read_at FROM notifications")
        assert row["status"] == "read" and row["delivered_at"] and row["read_at"]


async def test_a_failing_provider_opens_the_circuit_then_one_probe_closes_it(isolated):
    async with notifier_with_fake(isolated, max_in_flight_per_session=1, retry_base_s=0.05, retry_max_s=0.05,
                                  breaker_failures=3, breaker_cooldown_s=2.0) as n, \
            publisher(isolated.amqp_url) as pub:
        n.fake.fail_next(3, status=503)
        for i in range(4):
            await pub.publish(turn(f"21269395521{i}"))
        await eventually(lambda: _failures_spent(n), timeout=15, interval=0.01, what="three failures")
        opened = time.time()
        await eventually(lambda: _circuit(n, 1.0), what="circuit open")
        first = await n.fake.next_sent(timeout=15)
        # Nothing reached the provider while the circuit was open; then one probe, then the rest.
        assert first.at - opened >= 1.7
        for _ in range(3):
            await n.fake.next_sent(timeout=15)
        await eventually(lambda: _circuit(n, 0.0), what="circuit closed")
        await asyncio.sleep(0.5)
        assert len(n.fake.sent) == 4
        rows = await n.rows("SELECT status FROM notifications")
        assert all(r["status"] in ("sent", "delivered") for r in rows)


async def _failures_spent(n) -> bool:
    return n.fake.behaviour.fail_next == 0


async def _circuit(n, state: float) -> bool:
    async with n.http.get(n.url + "/metrics") as r:
        return f'wabus_notifier_circuit_state{{session="default"}} {state}' in await r.text()


async def test_the_sender_finds_each_session_with_due_messages_and_skips_held_ones(isolated):
    now = datetime.now(UTC)
    rows = [("a", "queued", now), ("a", "sent", now), ("b", "queued", now + timedelta(minutes=5)),
            ("c", "queued", now), ("d", "sent", now), ("e", "queued", now - timedelta(minutes=1)),
            ("e", "queued", now)]
    conn = await asyncpg.connect(isolated.database_url, server_settings={"search_path": "notifier"})
    try:
        for i, (session, status, due) in enumerate(rows):
            await conn.execute(
                "INSERT INTO notifications (id, tenant_id, session, kind, cause, phone, text, status,"
                " next_attempt_at, created_at) VALUES (gen_random_uuid(), $1, $2, 'reply', $3, '+212693955230',"
                " 'hello', $4, $5, $6)", TENANT, session, f"cause-{i}", status, due, now)
        await conn.execute("INSERT INTO sessions (session, status, connected, can_send, source, changed_at,"
                           " checked_at) VALUES ('c', 'not_ready', false, false, 'send', $1, $1)", now)
        due_now = [r["session"] for r in await conn.fetch(_DUE_SESSIONS, now)]
        queued = [r["session"] for r in await conn.fetch(_QUEUED_SESSIONS, datetime.max.replace(tzinfo=UTC))]
    finally:
        await conn.close()
    assert due_now == ["a", "e"]
    assert queued == ["a", "b", "c", "e"]
