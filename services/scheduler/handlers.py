"""What the scheduler does with a patient's WhatsApp request: join, position, leave, subscribe."""

from __future__ import annotations

from shared.events.catalog import (
    INTENT_HEADER,
    Direction,
    MessageProcessed,
    Patient,
    RefusalCode,
    TicketRefused,
    TicketVia,
)
from shared.events.envelope import Envelope, Event

from .queues import Queues

_DEPARTMENT_REQUIRED = {"join_queue", "subscribe"}
# The processed messages the scheduler answers; the broker keeps the others from its queue.
REQUESTS = [{INTENT_HEADER: name} for name in ("join_queue", "position", "leave", "subscribe")]


async def answer_patient(envelope: Envelope[MessageProcessed], queues: Queues) -> list[Event]:
    processed = envelope.data
    m, intent = processed.message, processed.intent
    # Only a patient writing in a one-to-one chat asks for a ticket; our own echoes never do.
    if intent is None or m.direction is not Direction.INBOUND or m.is_group:
        return []
    tenant = envelope.tenant_id
    patient = Patient(chat_id=m.chat_id, phone=m.sender, name=m.sender_name, language=processed.language)
    code = intent.arguments.get("department")
    if intent.name in _DEPARTMENT_REQUIRED and not code:
        return []  # the processor's reply already asks which department
    dept = await queues.department(tenant, code) if code else None
    if code and dept is None:
        return [TicketRefused(department=code, patient=patient, code=RefusalCode.UNKNOWN_DEPARTMENT,
                              reason=f"no department {code}", known_departments=await queues.codes(tenant))]
    if intent.name == "join_queue":
        assert dept is not None
        return await queues.join(dept, patient, via=TicketVia.WHATSAPP, actor="patient")
    if intent.name == "position":
        return await queues.report_position(tenant, dept, patient)
    if intent.name == "leave":
        return await queues.leave(tenant, dept, patient)
    if intent.name == "subscribe":
        assert dept is not None
        return await queues.subscribe(dept, patient)
    return []  # help, stop, start: the processor and the notifier answer those
