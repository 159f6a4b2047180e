"""Notifications from events to the fake provider: once, with the right text, and receipts after."""

import asyncio
import time
from datetime import UTC, datetime, timedelta

import asyncpg

from services.notifier.sending import _DUE_SESSIONS, _QUEUED_SESSIONS
from shared.events.catalog import Patient, Provider, SessionStatus, TurnReached, WhatsAppSessionStatusChanged
from shared.events.envelope import Envelope
from tests.integration.inbound.conftest import TENANTS
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


async def test_an_unanswered_send_never_takes_the_id_of_an_identical_earlier_message(isolated):
    async with notifier_with_fake(isolated) as n, publisher(isolated.amqp_url) as pub:
        # The same text twice to one number (a patient sends HELP twice), a second apart.
        first, second = turn(), turn()
        await pub.publish(first)
        await eventually(lambda: _in(n, str(first.id), ("sent", "delivered")), what="first sent")
        await asyncio.sleep(1.0)
        n.fake.hang_next(1, hang_s=5)  # the second goes out, and its answer never comes
        await pub.publish(second)
        # Both are in the chat: the second must get its own id, not the first's (the unique index).
        await eventually(lambda: _in(n, str(second.id), ("sent", "delivered")), timeout=20, what="reconciled")
        # And sending goes on for everyone.
        third = turn("212693955231")
        await pub.publish(third)
        await eventually(lambda: _in(n, str(third.id), ("sent", "delivered")), what="third sent")
        await asyncio.sleep(0.5)
        assert len(n.fake.sent) == 3
        ids = {r["cause"]: r["provider_message_id"] for r in await n.rows(
            "SELECT cause, provider_message_id FROM notifications")}
        assert [ids[str(first.id)], ids[str(second.id)]] == [s.provider_message_id for s in n.fake.sent[:2]]


async def test_a_send_that_may_have_gone_out_is_left_out_of_retry_all_and_retried_only_by_its_id(isolated):
    async with notifier_with_fake(isolated, provider="evolution") as n, publisher(isolated.amqp_url) as pub:
        n.fake.behaviour.acks = ()  # no receipt will say it arrived
        n.fake.hang_next(1, hang_s=5)  # Evolution cannot be asked whether it went out
        doubtful, rejected = turn("212693955241"), turn("212693955242")
        n.fake.reject("212693955242")
        await pub.publish(doubtful)
        await pub.publish(rejected)
        await eventually(lambda: _is(n, str(doubtful.id), "failed"), timeout=20, what="given up")
        await eventually(lambda: _is(n, str(rejected.id), "failed"), what="rejected")
        n.fake.behaviour.rejected.clear()
        n.fake.clear_sent()

        status, retried = await n.call("POST", "/v1/notifications/retry")
        assert status == 200 and retried["retried"] == 1
        status, listed = await n.call("GET", "/v1/notifications", role="viewer", status="failed")
        assert [(i["phone"], i["maybe_sent"]) for i in listed["items"]] == [("+212693955241", True)]
        await eventually(lambda: _is(n, str(rejected.id), "sent"), what="the rejected one sent")
        await asyncio.sleep(1.0)
        assert [s.to for s in n.fake.sent] == ["212693955242"]
        assert await _status(n, str(doubtful.id)) == "failed"

        # Staff who checked with the patient may send that one again, by its id.
        (row,) = await n.rows("SELECT id FROM notifications WHERE cause = $1", str(doubtful.id))
        status, retried = await n.call("POST", f"/v1/notifications/{row['id']}/retry")
        assert status == 200 and retried["retried"] == 1
        await eventually(lambda: _is(n, str(doubtful.id), "sent"), what="sent again on request")
        assert [s.to for s in n.fake.sent] == ["212693955242", "212693955241"]


def _session_status(tenant: str, status: SessionStatus, at: datetime, session: str = "default",
                    provider: Provider = Provider.WAHA) -> Envelope:
    return Envelope.new(WhatsAppSessionStatusChanged(provider=provider, session=session, status=status,
                                                     connected=status is SessionStatus.WORKING, at=at),
                        tenant_id=tenant)


async def test_a_tenant_changes_only_its_own_sessions_status(isolated):
    # Not polled (nothing is queued): what the notifier knows of the session comes from the events alone.
    async with notifier_with_fake(isolated, session_poll_s=3600) as n, publisher(isolated.amqp_url) as pub:
        now = datetime.now(UTC)
        # Signed webhooks of other tenants naming clinic-waha's WAHA session: one whose session is another,
        # one whose Evolution instance has the same name (not a WAHA session), one without a sender.
        for tenant, provider in ((TENANTS[Provider.META], Provider.WAHA),
                                 (TENANTS[Provider.EVOLUTION], Provider.WAHA), ("clinic-nobody", Provider.WAHA)):
            await pub.publish(_session_status(tenant, SessionStatus.STOPPED, now + timedelta(seconds=2),
                                              provider=provider))
        # Then clinic-waha's own, older than those: had they counted, it would be dropped as stale.
        await pub.publish(_session_status(TENANT, SessionStatus.WORKING, now + timedelta(seconds=1)))
        await eventually(lambda: _session(n, True), what="own event applied")
        (row,) = await n.rows("SELECT can_send, status, changed_at FROM sessions WHERE session = 'default'")
        assert row["can_send"] and row["status"] == "working" and row["changed_at"] == now + timedelta(seconds=1)
        # Its own webhook still holds it.
        await pub.publish(_session_status(TENANT, SessionStatus.STOPPED, now + timedelta(seconds=3)))
        await eventually(lambda: _session(n, False), what="held by its own tenant")
