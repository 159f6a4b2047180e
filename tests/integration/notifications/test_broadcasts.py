"""Broadcasts: per-recipient status, idempotency, invalid numbers, opt-outs and a session that drops."""

import asyncio
import json
import uuid
from datetime import UTC, datetime

from shared.events.catalog import (
    Intent,
    MessageProcessed,
    OpeningSubscribed,
    Patient,
    Provider,
    QueueOpened,
    TicketEnded,
    TicketIssued,
    TurnReached,
    WhatsAppMessage,
)
from shared.events.envelope import Envelope
from tests.integration.runtime.conftest import publisher
from tests.support import Listener, eventually

from .conftest import TENANT, notifier_with_fake

THREE = ["+212693955201", "0693955202", "212693955203"]


async def _broadcast(n, broadcast_id: str) -> dict:
    return (await n.call("GET", f"/v1/broadcasts/{broadcast_id}", role="viewer"))[1]


async def _finished(n, broadcast_id: str):
    b = await _broadcast(n, broadcast_id)
    return b if b["status"] in ("completed", "partial", "failed") else None


async def test_one_recipient_failing_makes_the_broadcast_partial(isolated):
    async with notifier_with_fake(isolated) as n, \
            Listener(isolated.amqp_url, "wabus.notifier", ["notification.status", "broadcast.status"]) as events:
        n.fake.reject("212693955202@c.us")
        body = {"message": "Clinic closed Friday", "recipients": THREE}
        status, answer = await n.call("POST", "/v1/broadcasts", body)
        assert status == 202, answer
        assert (answer["status"], answer["total_recipients"], answer["queued_count"],
                answer["invalid_recipients_count"], answer["idempotent"]) == ("accepted", 3, 3, 0, False)
        assert len(answer["items"]) == 3
        done = await eventually(lambda: _finished(n, answer["broadcast_id"]), what="broadcast finished")
        assert (done["status"], done["sent_count"], done["failed_count"]) == ("partial", 2, 1)
        (failed,) = [i for i in done["items"] if i["status"] == "failed"]
        assert failed["phone"] == "+212693955202" and failed["reason"]
        assert sorted(s.to for s in n.fake.sent) == ["212693955201", "212693955203"]
        status, listed = await n.call("GET", "/v1/notifications", role="viewer", status="failed")
        assert [i["phone"] for i in listed["items"]] == ["+212693955202"]
        status, metrics = await n.call("GET", "/v1/notifications/metrics", role="viewer")
        assert metrics["failed_last_5m"] == 1 and metrics["sent_last_5m"] >= 2 and metrics["active_broadcasts"] == 0
        # The broadcast reports as one; its recipients publish no event each.
        await eventually(lambda: _published(events, "broadcast.status", "partial"), what="BroadcastStatusChanged")
        assert {m.routing_key for m in events.messages} == {"broadcast.status"}


async def _published(events: Listener, key: str, status: str) -> bool:
    return any(m.routing_key == key and json.loads(m.body)["data"]["status"] == status for m in events.messages)


async def test_a_double_post_is_one_broadcast(isolated):
    async with notifier_with_fake(isolated) as n:
        body = {"message": "Vaccination day", "recipients": THREE}
        key = {"Idempotency-Key": str(uuid.uuid4())}
        first, second = await asyncio.gather(n.call("POST", "/v1/broadcasts", body, headers=key),
                                             n.call("POST", "/v1/broadcasts", body, headers=key))
        statuses = sorted([first[0], second[0]])
        assert statuses in ([202, 202], [202, 409]), statuses
        replay = await n.call("POST", "/v1/broadcasts", body, headers=key)
        assert replay[0] == 202 and replay[1]["broadcast_id"] == first[1].get("broadcast_id", second[1].get(
            "broadcast_id"))
        changed = await n.call("POST", "/v1/broadcasts", {**body, "message": "other"}, headers=key)
        assert changed[0] == 422 and changed[1]["field"] == "Idempotency-Key"
        # Without a key: the same message to the same people within minutes is the same broadcast.
        again = await asyncio.gather(*(n.call("POST", "/v1/broadcasts", body) for _ in range(3)))
        assert {a[1]["broadcast_id"] for a in again} == {replay[1]["broadcast_id"]}
        assert all(a[1]["idempotent"] for a in again)
        (count,) = await n.rows("SELECT count(*) FROM broadcasts")
        assert count[0] == 1
        await eventually(lambda: _finished(n, replay[1]["broadcast_id"]), what="finished")
        await asyncio.sleep(0.5)
        assert len(n.fake.sent) == 3


async def test_invalid_numbers_are_refused_with_reasons_and_never_sent(isolated):
    async with notifier_with_fake(isolated) as n:
        status, answer = await n.call("POST", "/v1/broadcasts", {"message": "x", "recipients": ["123", "+2126", "abc"]})
        assert status == 400 and answer["field"] == "recipients" and answer["invalid_recipients_count"] == 3
        assert all(i["reason"] for i in answer["invalid_recipients"])
        status, answer = await n.call("POST", "/v1/broadcasts", {"message": "y", "recipients": [*THREE, "12"]})
        assert status == 202 and answer["queued_count"] == 3 and answer["invalid_recipients_count"] == 1
        assert answer["invalid_recipients"][0]["phone"] == "12"
        status, answer = await n.call("POST", "/v1/broadcasts", {"recipients": THREE})
        assert status == 422
        status, answer = await n.call("POST", "/v1/broadcasts", {"message": "z", "recipients": THREE}, role="viewer")
        assert status == 403


async def test_session_not_connected_is_503_and_a_drop_mid_broadcast_pauses_then_resumes(isolated):
    async with notifier_with_fake(isolated, rate_per_s=20, rate_burst=1, max_in_flight_per_session=1) as n:
        n.fake.disconnect("default")
        status, answer = await n.call("POST", "/v1/broadcasts", {"message": "x", "recipients": THREE})
        assert status == 503 and answer["code"] == "WHATSAPP_NOT_CONNECTED"
        n.fake.connect("default")
        recipients = [f"+2126939553{i:02d}" for i in range(30)]
        status, answer = await n.call("POST", "/v1/broadcasts", {"message": "Reminder", "recipients": recipients})
        assert status == 202
        await eventually(lambda: _at_least(n, 5), what="first sends")
        n.fake.disconnect("default")
        await asyncio.sleep(2.5)
        paused_at = len(n.fake.sent)
        await asyncio.sleep(1.0)
        assert len(n.fake.sent) == paused_at < 30
        n.fake.connect("default")
        done = await eventually(lambda: _finished(n, answer["broadcast_id"]), timeout=30, what="finished")
        assert done["status"] == "completed" and done["sent_count"] == 30
        assert sorted(s.to for s in n.fake.sent) == sorted(r[1:] for r in recipients)


async def _at_least(n, count: int) -> bool:
    return len(n.fake.sent) >= count


async def test_opted_out_patients_are_skipped_and_failed_ones_can_be_retried(isolated):
    async with notifier_with_fake(isolated) as n:
        # As a STOP from this patient records it.
        await n.rows("INSERT INTO opt_outs (tenant_id, phone, at) VALUES ($1, $2, now())", "clinic-waha",
                     "+212693955201")
        n.fake.reject("212693955203@c.us")
        status, answer = await n.call("POST", "/v1/broadcasts", {"message": "Reminder", "recipients": THREE})
        assert status == 202 and answer["opted_out_count"] == 1 and answer["queued_count"] == 2
        done = await eventually(lambda: _finished(n, answer["broadcast_id"]), what="finished")
        assert (done["status"], done["sent_count"], done["failed_count"]) == ("partial", 1, 1)
        assert "212693955201" not in [s.to for s in n.fake.sent]
        n.fake.reset()  # the provider accepts the number again (and forgets what it sent)
        status, retried = await n.call("POST", "/v1/notifications/retry")
        assert status == 200 and retried["retried"] == 1
        done = await eventually(lambda: _completed(n, answer["broadcast_id"]), what="completed after retry")
        assert done["sent_count"] == 2
        assert [s.to for s in n.fake.sent] == ["212693955203"]


async def _completed(n, broadcast_id: str):
    b = await _broadcast(n, broadcast_id)
    return b if b["status"] == "completed" else None


def _patient(digits: str, name: str) -> Patient:
    return Patient(chat_id=f"{digits}@c.us", phone=f"+{digits}", name=name, language="fr")


def _scheduler_event(event) -> Envelope:
    return Envelope.new(event, tenant_id=TENANT)


async def test_a_departments_waiting_and_subscribed_patients_are_recipients(isolated):
    amina, badr, chama, driss = (_patient("212693955301", "Amina"), _patient("212693955302", "Badr"),
                                 _patient("212693955303", "Chama"), _patient("212693955304", "Driss"))
    opd, lab = {"department": "OPD", "department_name": "Consultations"}, {"department": "LAB",
                                                                             "department_name": "Laboratoire"}
    async with notifier_with_fake(isolated) as n, publisher(isolated.amqp_url) as pub:
        for i, patient in enumerate((amina, badr, chama), start=1):
            await pub.publish(_scheduler_event(TicketIssued(**opd, ticket=f"OPD-00{i}", ticket_id=f"t-{i}",
                                                            patient=patient, position=i, via="whatsapp")))
        # Amina is called (no longer waiting), Badr leaves; Chama waits. Driss waits for LAB to open.
        await pub.publish(_scheduler_event(TurnReached(**opd, ticket="OPD-001", ticket_id="t-1", patient=amina)))
        await pub.publish(_scheduler_event(TicketEnded(**opd, ticket="OPD-002", ticket_id="t-2", patient=badr,
                                                       outcome="cancelled", by="patient", reason="left")))
        await pub.publish(_scheduler_event(OpeningSubscribed(**lab, patient=driss, is_open=False)))
        await eventually(lambda: _audience_is(n, ["+212693955303", "+212693955304"]), what="audiences followed")

        status, answer = await n.call("POST", "/v1/broadcasts", {
            "message": "Le médecin aura 30 minutes de retard",
            "recipients": [{"department": "opd"}, {"department": "LAB", "patients": "subscribed"}, "0693955305"]})
        assert status == 202, answer
        assert (answer["total_recipients"], answer["queued_count"]) == (3, 3)
        assert [(d["department"], d["patients"], d["count"]) for d in answer["departments"]] == [
            ("OPD", "waiting", 1), ("LAB", "subscribed", 1)]
        done = await eventually(lambda: _finished(n, answer["broadcast_id"]), what="broadcast finished")
        assert done["status"] == "completed"
        delayed = [s.to for s in n.fake.sent if s.text == "Le médecin aura 30 minutes de retard"]
        assert sorted(delayed) == ["212693955303", "212693955304", "212693955305"]

        # LAB opens: its subscribers were told and are no longer waiting for it.
        await pub.publish(_scheduler_event(QueueOpened(**lab, opened_at=datetime.now(UTC), opened_by="schedule",
                                                       subscribers=[driss])))
        await eventually(lambda: _audience_is(n, ["+212693955303"]), what="subscription ended")
        await eventually(lambda: _sent_to(n, "212693955304", "Laboratoire est ouvert"), what="subscriber told")
        status, answer = await n.call("POST", "/v1/broadcasts", {
            "message": "x", "recipients": [{"department": "LAB", "patients": "all"}]})
        assert status == 400 and answer["field"] == "recipients"
        assert answer["departments"][0]["count"] == 0
        status, answer = await n.call("POST", "/v1/broadcasts", {
            "message": "x", "recipients": [{"department": "LAB", "patients": "everyone"}]})
        assert status == 422 and answer["errors"][0]["field"].startswith("recipients.0")


async def _sent_to(n, digits: str, beginning: str) -> bool:
    return any(s.to == digits and s.text.startswith(beginning) for s in n.fake.sent)


async def _audience_is(n, phones: list[str]) -> bool:
    return sorted(r["phone"] for r in await n.rows("SELECT phone FROM audience")) == phones


async def test_an_old_subscription_arriving_after_the_opening_is_not_kept(isolated):
    async with notifier_with_fake(isolated) as n, publisher(isolated.amqp_url) as pub:
        lab = {"department": "LAB", "department_name": "Laboratoire"}
        driss = _patient("212693955304", "Driss")
        subscribed = _scheduler_event(OpeningSubscribed(**lab, patient=driss, is_open=False))
        opened = _scheduler_event(QueueOpened(**lab, opened_at=datetime.now(UTC), opened_by="staff",
                                              subscribers=[driss]))
        await pub.publish(opened)  # the opening overtakes the subscription it ended (another shard)
        await pub.publish(subscribed)
        await eventually(lambda: _told(n, 2), what="both notices queued")
        assert await n.rows("SELECT * FROM audience") == []


async def _told(n, count: int) -> bool:
    return len(await n.rows("SELECT 1 FROM notifications")) >= count


async def test_cancelling_a_broadcast_stops_what_is_still_queued(isolated):
    async with notifier_with_fake(isolated, rate_per_s=5, rate_burst=1, max_in_flight_per_session=1) as n:
        recipients = [f"+2126939554{i:02d}" for i in range(20)]
        status, answer = await n.call("POST", "/v1/broadcasts", {"message": "Rappel", "recipients": recipients})
        assert status == 202
        await eventually(lambda: _at_least(n, 2), what="first sends")
        status, cancelled = await n.call("POST", f"/v1/broadcasts/{answer['broadcast_id']}/cancel")
        assert status == 200 and cancelled["status"] == "cancelled"
        await asyncio.sleep(1.5)
        after = await _broadcast(n, answer["broadcast_id"])
        sent = len(n.fake.sent)
        assert 2 <= sent < 20 and after["status"] == "cancelled"
        assert after["counts"]["cancelled"] + after["sent_count"] == 20 and after["sent_count"] == sent
        status, again = await n.call("POST", f"/v1/broadcasts/{answer['broadcast_id']}/cancel")
        assert status == 200 and again["status"] == "cancelled"
        status, _ = await n.call("POST", f"/v1/broadcasts/{uuid.uuid4()}/cancel")
        assert status == 404


def _stop(digits: str) -> Envelope:
    """A STOP as the processor publishes it, with the reply confirming it."""
    message = WhatsAppMessage(provider=Provider.WAHA, provider_message_id=f"IN-{uuid.uuid4()}",
                              chat_id=f"{digits}@c.us", sender=f"+{digits}", text="STOP", sent_at=datetime.now(UTC))
    return Envelope.new(MessageProcessed(message=message, conversation_id="c", processing_ms=1,
                                         intent=Intent(name="stop"), reply_text="Vous ne recevrez plus nos messages."),
                        tenant_id=TENANT)


async def _row(n, broadcast_id: str, phone: str):
    (row,) = await n.rows("SELECT id, status, reason FROM notifications WHERE broadcast_id = $1 AND phone = $2",
                          uuid.UUID(broadcast_id), phone)
    return row


async def _row_is(n, broadcast_id: str, phone: str, status: str):
    row = await _row(n, broadcast_id, phone)
    return row if row["status"] == status else None


async def test_stop_cancels_the_numbers_queued_broadcast_messages_and_retries_leave_it_out(isolated):
    # One send every two seconds: the broadcast is still queued when the STOP arrives.
    async with notifier_with_fake(isolated, rate_per_s=0.5, rate_burst=1, max_in_flight_per_session=1) as n, \
            publisher(isolated.amqp_url) as pub:
        n.fake.reject("212693955504")
        recipients = [f"+21269395550{i}" for i in range(1, 5)]
        status, answer = await n.call("POST", "/v1/broadcasts", {"message": "Rappel", "recipients": recipients})
        assert status == 202
        broadcast_id = answer["broadcast_id"]
        await n.fake.next_sent()
        stopping = next(p for p in recipients[:3] if p[1:] not in {s.to for s in n.fake.sent})
        await pub.publish(_stop(stopping[1:]))
        cancelled = await eventually(lambda: _row_is(n, broadcast_id, stopping, "cancelled"), what="cancelled")
        assert "STOP" in cancelled["reason"]
        done = await eventually(lambda: _finished(n, broadcast_id), timeout=20, what="finished")
        assert (done["status"], done["sent_count"], done["failed_count"], done["counts"]["cancelled"]) == (
            "partial", 2, 1, 1)
        assert stopping[1:] not in [s.to for s in n.fake.sent if s.text == "Rappel"]
        # The reply confirming the STOP is not a broadcast: it goes out.
        await eventually(lambda: _sent_to(n, stopping[1:], "Vous ne recevrez plus"), timeout=20, what="reply")

        # A failed broadcast message to a number that opted out since is never sent again.
        n.fake.behaviour.rejected.clear()
        await pub.publish(_stop("212693955504"))
        await eventually(lambda: _sent_to(n, "212693955504", "Vous ne recevrez plus"), timeout=20, what="reply")
        status, retried = await n.call("POST", "/v1/notifications/retry")
        assert status == 200 and retried["retried"] == 0
        failed = await _row(n, broadcast_id, "+212693955504")
        status, refused = await n.call("POST", f"/v1/notifications/{failed['id']}/retry")
        assert status == 409 and "STOP" in refused["reason"]
        assert (await _row(n, broadcast_id, "+212693955504"))["status"] == "failed"


async def test_a_broadcast_queued_as_the_number_opted_out_is_not_sent_to_it(isolated):
    async with notifier_with_fake(isolated, rate_per_s=0.5, rate_burst=1, max_in_flight_per_session=1) as n:
        recipients = [f"+21269395551{i}" for i in range(1, 4)]
        status, answer = await n.call("POST", "/v1/broadcasts", {"message": "Rappel", "recipients": recipients})
        assert status == 202
        await n.fake.next_sent()
        stopping = next(p for p in recipients if p[1:] not in {s.to for s in n.fake.sent})
        # The STOP committed while the broadcast was being queued: its rows are queued all the same.
        await n.rows("INSERT INTO opt_outs (tenant_id, phone, at) VALUES ($1, $2, now())", TENANT, stopping)
        done = await eventually(lambda: _finished(n, answer["broadcast_id"]), timeout=20, what="finished")
        assert done["status"] == "completed" and done["sent_count"] == 2 and done["counts"]["cancelled"] == 1
        assert stopping[1:] not in [s.to for s in n.fake.sent]
        assert "STOP" in (await _row(n, answer["broadcast_id"], stopping))["reason"]
