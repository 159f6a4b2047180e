"""What to tell whom, decided in the transaction that consumes the event: a notification row each.

Rows are sent later by the sender (sending.py); a row is unique per cause and phone, so a
redelivered event or a double click never queues a second message.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from shared.events import outbox
from shared.events.catalog import (
    INTENT_HEADER,
    REPLY_HEADER,
    Direction,
    MessageProcessed,
    OpeningSubscribed,
    Patient,
    PositionReported,
    QueueOpened,
    TicketEnded,
    TicketIssued,
    TicketOutcome,
    TicketRefused,
    TurnApproaching,
    TurnReached,
    WhatsAppMessageAck,
    WhatsAppSessionStatusChanged,
)
from shared.events.envelope import Envelope, Event
from shared.events.errors import PermanentFailure
from shared.phones import InvalidPhone, parse_jid, phone_of, to_e164

from . import audiences, receipts, templates
from .sending import OPTED_OUT, WAKE_SENDER, broadcast_progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sender:
    tenant_id: str
    provider: str
    session: str
    default_region: str
    locale: str
    templates: dict[str, dict[str, str]]


class NoSender(PermanentFailure):
    def __init__(self, tenant_id: str):
        super().__init__(f"tenant {tenant_id!r} has no sender: add it with `wabus tenants add`, then retry")


async def sender_of(conn: asyncpg.Connection, tenant_id: str) -> Sender:
    row = await conn.fetchrow(
        "SELECT tenant_id, provider, session, default_region, locale, templates FROM senders WHERE tenant_id = $1",
        tenant_id)
    if row is None:
        raise NoSender(tenant_id)
    return Sender(**{**dict(row), "templates": json.loads(row["templates"])})


async def add_sender(conn: asyncpg.Connection, *, tenant_id: str, provider: str, session: str, default_region: str,
                     locale: str) -> None:
    """Written by `wabus tenants add`, in its transaction, into this service's schema."""
    await conn.execute(
        "INSERT INTO notifier.senders (tenant_id, provider, session, default_region, locale)"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant_id) DO UPDATE SET provider = EXCLUDED.provider,"
        " session = EXCLUDED.session, default_region = EXCLUDED.default_region, locale = EXCLUDED.locale",
        tenant_id, provider, session, default_region, locale)


@dataclass(frozen=True)
class Outgoing:
    """One message to one number, before it is a row."""

    kind: str
    phone: str | None  # None: no usable number; recorded as failed with `problem`
    text: str
    problem: str | None = None


_INSERT = """
INSERT INTO notifications (id, tenant_id, session, kind, cause, phone, text, status, reason,
                           next_attempt_at, created_at, failed_at)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                     $8::text[], $9::text[], $10::timestamptz[], $10::timestamptz[], $11::timestamptz[])
ON CONFLICT (cause, phone) DO NOTHING
"""


async def record(conn: asyncpg.Connection, sender: Sender, cause: str, outgoing: list[Outgoing], at: datetime) -> int:
    """Queue messages (or record why one cannot go); returns how many rows are new."""
    if not outgoing:
        return 0
    n = len(outgoing)
    status = await conn.execute(
        _INSERT, [uuid.uuid4() for _ in range(n)], [sender.tenant_id] * n, [sender.session] * n,
        [o.kind for o in outgoing], [cause] * n,
        [o.phone or f"invalid:{i}" for i, o in enumerate(outgoing)], [o.text for o in outgoing],
        ["failed" if o.problem else "queued" for o in outgoing], [o.problem for o in outgoing], [at] * n,
        [at if o.problem else None for o in outgoing])
    await conn.execute(WAKE_SENDER)
    return int(status.split()[-1])


# One text to many numbers: only the numbers travel, the rest is said once.
_INSERT_BROADCAST = """
INSERT INTO notifications (id, tenant_id, session, kind, cause, broadcast_id, phone, text, status,
                           next_attempt_at, created_at)
SELECT gen_random_uuid(), $1, $2, 'broadcast', 'broadcast:' || $3::uuid, $3, phone, $4, 'queued', $5, $5
FROM unnest($6::text[]) AS phone
"""


async def queue_broadcast(conn: asyncpg.Connection, sender: Sender, broadcast_id: uuid.UUID, text: str,
                          phones: list[str], at: datetime) -> None:
    """A broadcast's messages, one per (distinct, valid) number: 10,000 rows in one statement."""
    if phones:
        await conn.execute(_INSERT_BROADCAST, sender.tenant_id, sender.session, broadcast_id, text, at, phones)
        await conn.execute(WAKE_SENDER)


def phone_for(patient: Patient, region: str) -> tuple[str | None, str | None]:
    """(E.164, None) or (None, why not)."""
    candidate = patient.phone or phone_of(parse_jid(patient.chat_id))
    if not candidate:
        return None, "no phone number for this chat"
    try:
        return to_e164(candidate, region), None
    except InvalidPhone as exc:
        return None, f"invalid phone number: {exc.reason}"


def _to_patient(sender: Sender, patient: Patient, kind: str, values: dict[str, object]) -> Outgoing:
    language = templates.language_of(patient.language, sender.locale)
    phone, problem = phone_for(patient, sender.default_region)
    text = templates.render(kind, language, {"name": patient.name, **values}, sender.templates)
    return Outgoing(kind, phone, text, problem)


def outgoing_for(event: Event, sender: Sender) -> list[Outgoing]:
    """The messages a scheduler event asks for."""
    match event:
        case TicketIssued():
            return [_to_patient(sender, event.patient, "ticket_issued", {
                "department": event.department_name, "ticket": event.ticket, "position": event.position,
                "wait_s": event.estimated_wait_s})]
        case TicketRefused():
            return [_to_patient(sender, event.patient, f"ticket_refused_{event.code.value}", {
                "department": event.department_name or event.department, "ticket": event.ticket,
                "position": event.position, "message": "", "departments": ", ".join(event.known_departments)})]
        case TurnApproaching():
            return [_to_patient(sender, event.patient, "turn_approaching", {
                "department": event.department_name, "ticket": event.ticket, "position": event.position,
                "wait_s": event.estimated_wait_s})]
        case TurnReached():
            return [_to_patient(sender, event.patient, "turn_reached", {
                "department": event.department_name, "ticket": event.ticket, "counter": event.counter})]
        case PositionReported():
            if event.ticket is None:
                return [_to_patient(sender, event.patient, "no_ticket", {})]
            return [_to_patient(sender, event.patient, "position", {
                "department": event.department_name, "ticket": event.ticket, "position": event.position,
                "wait_s": event.estimated_wait_s})]
        case OpeningSubscribed():
            kind = "already_open" if event.is_open else "subscribed"
            return [_to_patient(sender, event.patient, kind, {"department": event.department_name,
                                                              "code": event.department})]
        case TicketEnded(outcome=TicketOutcome.CANCELLED, by="patient"):
            return [_to_patient(sender, event.patient, "ticket_left", {"department": event.department_name,
                                                                       "ticket": event.ticket})]
        case TicketEnded(outcome=TicketOutcome.CANCELLED, reason="queue_closed"):
            return [_to_patient(sender, event.patient, "ticket_cancelled_queue_closed", {
                "department": event.department_name, "ticket": event.ticket})]
        case QueueOpened():
            return [_to_patient(sender, p, "queue_opened", {"department": event.department_name,
                                                            "code": event.department, "message": event.message})
                    for p in event.subscribers]
    return []


async def notify_patients(envelope: Envelope, conn: asyncpg.Connection) -> list[Event]:
    """Queue what the event tells its patients, and keep the departments' audiences up to date."""
    sender = await sender_of(conn, envelope.tenant_id)
    await audiences.follow(conn, envelope.tenant_id, envelope.data, envelope.occurred_at)
    await record(conn, sender, str(envelope.id), outgoing_for(envelope.data, sender), envelope.occurred_at)
    return []


# The processed messages the notifier acts on; the broker keeps the others from its queue.
REPLIES = [{INTENT_HEADER: "stop"}, {INTENT_HEADER: "start"}, {REPLY_HEADER: "yes"}]


async def reply_to_patient(envelope: Envelope[MessageProcessed], conn: asyncpg.Connection) -> list[Event]:
    """The bot's replies, and STOP/START for broadcasts."""
    processed = envelope.data
    m = processed.message
    if m.direction is not Direction.INBOUND or m.is_group:
        return []
    intent = processed.intent.name if processed.intent else None
    if intent in ("stop", "start") and m.sender:
        if intent == "stop":
            await conn.execute("INSERT INTO opt_outs (tenant_id, phone, at) VALUES ($1, $2, $3)"
                               " ON CONFLICT DO NOTHING", envelope.tenant_id, m.sender, envelope.occurred_at)
            await _stop_queued_broadcasts(conn, envelope.tenant_id, m.sender, envelope.occurred_at)
        else:
            await conn.execute("DELETE FROM opt_outs WHERE tenant_id = $1 AND phone = $2", envelope.tenant_id,
                               m.sender)
    if not processed.reply_text:
        return []
    sender = await sender_of(conn, envelope.tenant_id)
    phone, problem = phone_for(Patient(chat_id=m.chat_id, phone=m.sender), sender.default_region)
    await record(conn, sender, str(envelope.id), [Outgoing("reply", phone, processed.reply_text, problem)],
                 envelope.occurred_at)
    return []


async def _stop_queued_broadcasts(conn: asyncpg.Connection, tenant_id: str, phone: str, at: datetime) -> None:
    """Broadcast messages still queued for this number are not sent; replies and queue notices are not
    broadcasts, and go on. One in flight completes; the sender skips any queued concurrently with this."""
    stopped = await conn.fetch(
        "UPDATE notifications SET status = 'cancelled', reason = $3 WHERE tenant_id = $1 AND phone = $2"
        " AND broadcast_id IS NOT NULL AND status = 'queued' RETURNING broadcast_id", tenant_id, phone, OPTED_OUT)
    events = []
    for broadcast_id in {r["broadcast_id"] for r in stopped}:
        events += await broadcast_progress(conn, broadcast_id, at)
    await outbox.add(conn, events)


async def apply_ack(envelope: Envelope[WhatsAppMessageAck], conn: asyncpg.Connection) -> list[Event]:
    return await receipts.apply(conn, envelope.data.provider_message_id, envelope.data.status, envelope.data.at)


async def note_session_status(envelope: Envelope[WhatsAppSessionStatusChanged], conn: asyncpg.Connection) -> list:
    s = envelope.data
    # A tenant speaks only for its own session: another's webhook must not hold (or free) it.
    if not await conn.fetchval(
            "SELECT EXISTS (SELECT FROM senders WHERE tenant_id = $1 AND session = $2 AND provider = $3)",
            envelope.tenant_id, s.session, s.provider.value):
        log.warning("session status ignored: not the tenant's session",
                    extra={"session": s.session, "provider": s.provider.value, "status": s.status.value})
        return []
    await conn.execute(
        "INSERT INTO sessions (session, status, connected, can_send, source, changed_at, checked_at)"
        " VALUES ($1, $2, $3, $3, 'event', $4, $4) ON CONFLICT (session) DO UPDATE SET status = EXCLUDED.status,"
        " connected = EXCLUDED.connected, can_send = EXCLUDED.can_send, source = 'event',"
        " changed_at = EXCLUDED.changed_at, checked_at = EXCLUDED.checked_at"
        " WHERE sessions.changed_at <= EXCLUDED.changed_at",
        s.session, s.status.value, s.connected, s.at)
    if s.connected:
        await conn.execute(WAKE_SENDER)
    return []
