"""Queue operations: every change to a department's queue, with the events it causes.

Each operation runs inside the caller's transaction and starts by locking the department's
status row, so joins, calls and closings of one department never interleave; what they return
goes to the outbox in that same transaction. Positions are counted from the waiting tickets
each time, never stored.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import asyncpg

from shared.events.catalog import (
    OpeningSubscribed,
    Patient,
    PositionReported,
    QueueClosed,
    QueueOpened,
    QueueStatusChanged,
    RefusalCode,
    TicketEnded,
    TicketIssued,
    TicketOutcome,
    TicketRefused,
    TicketVia,
    TurnApproaching,
    TurnReached,
)
from shared.events.envelope import Event
from shared.events.http import Conflict

from .schedule import Calendar, Hours, Override, service_day

# How many recent services the estimated wait averages over, and how far back it looks.
SERVICE_SAMPLE = 20
SERVICE_WINDOW_DAYS = 7


class QueueConflict(Conflict):
    """The request is valid but the queue's state does not allow it."""


@dataclass(frozen=True)
class Department:
    id: uuid.UUID
    tenant_id: str
    code: str
    name: str
    timezone: str
    ticket_prefix: str
    phone_region: str
    on_close: str
    almost_position: int
    default_service_s: float

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


@dataclass(frozen=True)
class Status:
    is_open: bool
    since: datetime
    changed_by: str
    reason: str | None
    message: str | None
    closes_at: datetime | None
    current_ticket: str | None
    avg_service_s: float | None

    def audit(self) -> dict[str, object]:
        return {"is_open": self.is_open, "reason": self.reason, "message": self.message,
                "closes_at": self.closes_at.isoformat() if self.closes_at else None}


@dataclass(frozen=True)
class Ticket:
    id: uuid.UUID
    department_id: uuid.UUID
    label: str
    state: str
    patient: Patient
    counter: str | None
    recalls: int


DEPARTMENT_COLUMNS = ("id, tenant_id, code, name, timezone, ticket_prefix, phone_region, on_close, almost_position,"
                      " default_service_s")
_STATUS_COLUMNS = "is_open, since, changed_by, reason, message, closes_at, current_ticket, avg_service_s"
_TICKET_COLUMNS = "id, department_id, label, state, chat_id, phone, patient_name, language, counter, recalls"

_POSITION = """
SELECT count(*) FROM tickets t, tickets me
WHERE me.id = $1 AND t.department_id = me.department_id AND t.state = 'waiting'
  AND (t.queued_at, t.id) <= (me.queued_at, me.id)
"""

_NEWLY_ALMOST = """
WITH ranked AS (
    SELECT id, almost_told_at, row_number() OVER (ORDER BY queued_at, id) AS position
    FROM tickets WHERE department_id = $1 AND state = 'waiting'
)
UPDATE tickets t SET almost_told_at = $3
FROM ranked WHERE ranked.id = t.id AND ranked.position <= $2 AND ranked.almost_told_at IS NULL
RETURNING t.id, t.label, t.chat_id, t.phone, t.patient_name, t.language, ranked.position
"""

_NEXT_NUMBER = """
INSERT INTO ticket_counters (department_id, service_day, last_number) VALUES ($1, $2, 1)
ON CONFLICT (department_id, service_day) DO UPDATE SET last_number = ticket_counters.last_number + 1
RETURNING last_number
"""

_AVERAGE_SERVICE = """
SELECT avg(extract(epoch FROM finished_at - called_at)) FROM (
    SELECT finished_at, called_at FROM tickets
    WHERE department_id = $1 AND state = 'served' AND called_at IS NOT NULL AND finished_at > $2
    ORDER BY finished_at DESC LIMIT $3
) recent
"""


def patient_of(row: asyncpg.Record) -> Patient:
    return Patient(chat_id=row["chat_id"], phone=row["phone"], name=row["patient_name"], language=row["language"])


def _ticket(row: asyncpg.Record) -> Ticket:
    return Ticket(row["id"], row["department_id"], row["label"], row["state"], patient_of(row), row["counter"],
                  row["recalls"])


def department_of(row: asyncpg.Record) -> Department:
    return Department(**{k: row[k] for k in Department.__dataclass_fields__})


class Queues:
    """The scheduler's unit of work: one connection, in one transaction, at one instant."""

    def __init__(self, conn: asyncpg.Connection, now: datetime | None = None):
        self.conn = conn
        self.now = now or datetime.now(UTC)
        self._live = now is None  # no instant given: the clock moves on while a lock is awaited

    def at(self, now: datetime) -> Queues:
        return Queues(self.conn, now)

    # --- lookups ------------------------------------------------------------------------------

    async def department(self, tenant_id: str, code: str) -> Department | None:
        row = await self.conn.fetchrow(
            f"SELECT {DEPARTMENT_COLUMNS} FROM departments WHERE tenant_id = $1 AND code = $2", tenant_id, code.upper())
        return department_of(row) if row else None

    async def department_by_id(self, department_id: uuid.UUID) -> Department:
        row = await self.conn.fetchrow(f"SELECT {DEPARTMENT_COLUMNS} FROM departments WHERE id = $1", department_id)
        return department_of(row)

    async def departments(self, tenant_id: str | None = None) -> list[Department]:
        rows = await self.conn.fetch(
            f"SELECT {DEPARTMENT_COLUMNS} FROM departments WHERE $1::text IS NULL OR tenant_id = $1"
            " ORDER BY tenant_id, code", tenant_id)
        return [department_of(r) for r in rows]

    async def codes(self, tenant_id: str) -> list[str]:
        return [r["code"] for r in await self.conn.fetch(
            "SELECT code FROM departments WHERE tenant_id = $1 ORDER BY code", tenant_id)]

    async def status(self, dept: Department, *, lock: bool = False) -> Status:
        row = await self.conn.fetchrow(
            f"SELECT {_STATUS_COLUMNS} FROM queue_status WHERE department_id = $1{' FOR UPDATE' if lock else ''}",
            dept.id)
        if lock and self._live:
            # What is done under the lock comes after whatever held it (a subscription, say): never
            # stamp it with an instant taken before the wait.
            self.now = max(self.now, datetime.now(UTC))
        return Status(**dict(row))

    async def ticket(self, tenant_id: str, ticket_id: uuid.UUID) -> Ticket | None:
        row = await self.conn.fetchrow(
            f"SELECT {_TICKET_COLUMNS} FROM tickets WHERE tenant_id = $1 AND id = $2", tenant_id, ticket_id)
        return _ticket(row) if row else None

    async def active_ticket(self, dept: Department, chat_id: str) -> Ticket | None:
        row = await self.conn.fetchrow(
            f"SELECT {_TICKET_COLUMNS} FROM tickets WHERE department_id = $1 AND chat_id = $2"
            " AND state IN ('waiting', 'called')", dept.id, chat_id)
        return _ticket(row) if row else None

    async def active_tickets_of(self, tenant_id: str, chat_id: str) -> list[tuple[Department, Ticket]]:
        rows = await self.conn.fetch(
            f"SELECT {_TICKET_COLUMNS} FROM tickets WHERE tenant_id = $1 AND chat_id = $2"
            " AND state IN ('waiting', 'called') ORDER BY issued_at", tenant_id, chat_id)
        return [(await self.department_by_id(r["department_id"]), _ticket(r)) for r in rows]

    async def calendar(self, dept: Department) -> Calendar:
        hours = await self.conn.fetch(
            "SELECT weekday, opens_at, closes_at FROM schedules WHERE department_id = $1", dept.id)
        overrides = await self.conn.fetch(
            "SELECT is_open, starts_at, ends_at, reason FROM overrides WHERE department_id = $1 AND ends_at > $2",
            dept.id, self.now)
        return Calendar(dept.zone, tuple(Hours(**dict(h)) for h in hours),
                        tuple(Override(**dict(o)) for o in overrides))

    async def position(self, ticket_id: uuid.UUID) -> int:
        return await self.conn.fetchval(_POSITION, ticket_id)

    async def waiting(self, dept: Department) -> int:
        return await self.conn.fetchval(
            "SELECT count(*) FROM tickets WHERE department_id = $1 AND state = 'waiting'", dept.id)

    def estimate(self, dept: Department, status: Status, position: int) -> float:
        """Each patient ahead, and the one being served, takes the recent average service time."""
        return round(position * (status.avg_service_s or dept.default_service_s), 1)

    # --- queue status -------------------------------------------------------------------------

    async def open(self, dept: Department, *, actor: str, reason: str | None = None, message: str | None = None,
                   closes_at: datetime | None = None) -> list[Event]:
        before = await self.status(dept, lock=True)
        if before.is_open:
            return []
        if closes_at is None:
            closes_at = (await self.calendar(dept)).next_closing(self.now)
        after = replace(before, is_open=True, since=self.now, changed_by=actor, reason=reason, message=message,
                        closes_at=closes_at)
        await self._set_status(dept, after)
        await self.audit(dept, actor, "open", reason, before.audit(), after.audit())
        subscribers = [patient_of(r) for r in await self.conn.fetch(
            "DELETE FROM opening_subscriptions WHERE department_id = $1"
            " RETURNING chat_id, phone, patient_name, language, created_at", dept.id)]
        opened = QueueOpened(department=dept.code, department_name=dept.name, opened_at=self.now, opened_by=actor,
                             reason=reason, message=message, closes_at=closes_at, subscribers=subscribers)
        return [opened, await self.status_changed(dept)]

    async def close(self, dept: Department, *, actor: str, reason: str | None = None,
                    message: str | None = None) -> list[Event]:
        before = await self.status(dept, lock=True)
        if not before.is_open:
            return []
        after = replace(before, is_open=False, since=self.now, changed_by=actor, reason=reason, message=message,
                        closes_at=None)
        await self._set_status(dept, after)
        await self.audit(dept, actor, "close", reason, before.audit(), after.audit())
        events: list[Event] = []
        carried = 0
        if dept.on_close == "carry_over":
            carried = await self.waiting(dept)
        else:
            rows = await self.conn.fetch(
                f"UPDATE tickets SET state = 'cancelled', finished_at = $2, end_reason = 'queue_closed'"
                f" WHERE department_id = $1 AND state = 'waiting' RETURNING {_TICKET_COLUMNS}", dept.id, self.now)
            events += [self.ended(dept, _ticket(r), TicketOutcome.CANCELLED, actor, "queue_closed") for r in rows]
        closed = QueueClosed(department=dept.code, department_name=dept.name, closed_at=self.now, closed_by=actor,
                             reason=reason, message=message, cancelled_tickets=len(events),
                             carried_over_tickets=carried)
        return [closed, *events, await self.status_changed(dept)]

    async def _set_status(self, dept: Department, s: Status) -> None:
        await self.conn.execute(
            "UPDATE queue_status SET is_open = $2, since = $3, changed_by = $4, reason = $5, message = $6,"
            " closes_at = $7 WHERE department_id = $1",
            dept.id, s.is_open, s.since, s.changed_by, s.reason, s.message, s.closes_at)

    async def status_changed(self, dept: Department) -> QueueStatusChanged:
        status = await self.status(dept)
        waiting = await self.waiting(dept)
        return QueueStatusChanged(
            department=dept.code, department_name=dept.name, is_open=status.is_open, message=status.message,
            waiting=waiting, estimated_wait_s=self.estimate(dept, status, waiting + 1) if status.is_open else None,
            current_ticket=status.current_ticket)

    async def audit(self, dept: Department, actor: str, action: str, reason: str | None,
                    before: dict | None, after: dict | None) -> None:
        await self.conn.execute(
            "INSERT INTO queue_audit (tenant_id, department_id, at, actor, action, reason, before, after)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8::jsonb)",
            dept.tenant_id, dept.id, self.now, actor, action, reason,
            json.dumps(before) if before is not None else None, json.dumps(after) if after is not None else None)

    # --- tickets ------------------------------------------------------------------------------

    async def join(self, dept: Department, patient: Patient, *, via: TicketVia, actor: str) -> list[Event]:
        """Issue a ticket, or say why not; a patient holds one active ticket per department."""
        status = await self.status(dept, lock=True)
        held = await self.active_ticket(dept, patient.chat_id)
        if held is not None:
            position = await self.position(held.id) if held.state == "waiting" else None
            return [TicketRefused(
                department=dept.code, department_name=dept.name, patient=held.patient,
                code=RefusalCode.ALREADY_IN_QUEUE, reason=f"already holds ticket {held.label}", ticket=held.label,
                position=position or None)]
        if not status.is_open:
            return [TicketRefused(department=dept.code, department_name=dept.name, patient=patient,
                                  code=RefusalCode.QUEUE_CLOSED, reason=status.message or "the queue is closed")]
        return await self._issue(dept, status, patient, via=via, actor=actor)

    async def _issue(self, dept: Department, status: Status, patient: Patient, *, via: TicketVia,
                     actor: str) -> list[Event]:
        ticket_id = uuid.uuid4()
        day = service_day(self.now, dept.zone)
        number = await self.conn.fetchval(_NEXT_NUMBER, dept.id, day)
        label = f"{dept.ticket_prefix}-{number:03d}"
        await self.conn.execute(
            "INSERT INTO tickets (id, tenant_id, department_id, service_day, number, label, chat_id, phone,"
            " patient_name, language, state, joined_via, issued_at, queued_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'waiting', $11, $12, $12)",
            ticket_id, dept.tenant_id, dept.id, day, number, label, patient.chat_id, patient.phone, patient.name,
            patient.language, via.value, self.now)
        position = await self.position(ticket_id)
        if position <= dept.almost_position:  # the ticket itself already tells them they are close
            await self.conn.execute("UPDATE tickets SET almost_told_at = $2 WHERE id = $1", ticket_id, self.now)
        if via is TicketVia.STAFF:
            await self.audit(dept, actor, "join", None, None, {"ticket": label, "via": via.value})
        issued = TicketIssued(department=dept.code, department_name=dept.name, ticket=label, ticket_id=str(ticket_id),
                              patient=patient, position=position, estimated_wait_s=self.estimate(dept, status, position),
                              via=via)
        return [issued, await self.status_changed(dept)]

    async def call_next(self, dept: Department, *, actor: str, counter: str | None) -> list[Event]:
        await self.status(dept, lock=True)
        row = await self.conn.fetchrow(
            f"SELECT {_TICKET_COLUMNS} FROM tickets WHERE department_id = $1 AND state = 'waiting'"
            " ORDER BY queued_at, id LIMIT 1", dept.id)
        if row is None:
            raise QueueConflict("nobody is waiting", department=dept.code)
        ticket = _ticket(row)
        await self.conn.execute(
            "UPDATE tickets SET state = 'called', called_at = $2, counter = $3 WHERE id = $1",
            ticket.id, self.now, counter)
        await self._set_current(dept, ticket.label)
        await self.audit(dept, actor, "call", None, {"ticket": ticket.label, "state": "waiting"},
                         {"ticket": ticket.label, "state": "called", "counter": counter})
        reached = TurnReached(department=dept.code, department_name=dept.name, ticket=ticket.label,
                              ticket_id=str(ticket.id), patient=ticket.patient, counter=counter)
        return [reached, *await self._approaching(dept), await self.status_changed(dept)]

    async def recall(self, dept: Department, ticket: Ticket, *, actor: str) -> list[Event]:
        await self.status(dept, lock=True)
        ticket = await self._current_state(ticket)
        if ticket.state != "called":
            raise QueueConflict(f"ticket {ticket.label} is {ticket.state}, not called", ticket=ticket.label)
        recalls = await self.conn.fetchval(
            "UPDATE tickets SET recalls = recalls + 1 WHERE id = $1 RETURNING recalls", ticket.id)
        await self._set_current(dept, ticket.label)
        await self.audit(dept, actor, "recall", None, None, {"ticket": ticket.label, "recalls": recalls})
        return [TurnReached(department=dept.code, department_name=dept.name, ticket=ticket.label,
                            ticket_id=str(ticket.id), patient=ticket.patient, counter=ticket.counter, recall=recalls)]

    async def finish(self, dept: Department, ticket: Ticket, outcome: TicketOutcome, *, actor: str,
                     reason: str | None = None) -> list[Event]:
        """Served or no-show (a called ticket), or cancelled (a waiting or called one)."""
        await self.status(dept, lock=True)
        ticket = await self._current_state(ticket)
        allowed = {TicketOutcome.SERVED: {"called"}, TicketOutcome.NO_SHOW: {"called"},
                   TicketOutcome.CANCELLED: {"waiting", "called"}}[outcome]
        if ticket.state not in allowed:
            raise QueueConflict(f"ticket {ticket.label} is {ticket.state}; {outcome.value} needs "
                                f"{' or '.join(sorted(allowed))}", ticket=ticket.label, state=ticket.state)
        await self.conn.execute(
            "UPDATE tickets SET state = $2, finished_at = $3, end_reason = $4 WHERE id = $1",
            ticket.id, outcome.value, self.now, reason)
        if outcome is TicketOutcome.SERVED:
            await self.refresh_average(dept)
        if actor != "patient":
            await self.audit(dept, actor, outcome.value, reason, {"ticket": ticket.label, "state": ticket.state},
                             {"ticket": ticket.label, "state": outcome.value})
        events: list[Event] = [self.ended(dept, ticket, outcome, actor, reason)]
        if ticket.state == "waiting":
            events += await self._approaching(dept)
        return [*events, await self.status_changed(dept)]

    async def transfer(self, dept: Department, ticket: Ticket, target: Department, *, actor: str,
                       reason: str | None) -> list[Event]:
        if target.id == dept.id:
            raise QueueConflict("a ticket cannot be transferred to its own department", ticket=ticket.label)
        # Lock both departments in one global order, so two opposite transfers cannot deadlock.
        for d in sorted((dept, target), key=lambda d: d.id):
            await self.status(d, lock=True)
        ticket = await self._current_state(ticket)
        if ticket.state not in ("waiting", "called"):
            raise QueueConflict(f"ticket {ticket.label} is {ticket.state}", ticket=ticket.label, state=ticket.state)
        if await self.active_ticket(target, ticket.patient.chat_id) is not None:
            raise QueueConflict(f"the patient already holds a ticket in {target.code}", department=target.code)
        await self.conn.execute(
            "UPDATE tickets SET state = 'transferred', finished_at = $2, end_reason = $3 WHERE id = $1",
            ticket.id, self.now, reason)
        ended = self.ended(dept, ticket, TicketOutcome.TRANSFERRED, actor, reason)
        # The receiving department takes the patient even when closed: staff decided it.
        issued = await self._issue(target, await self.status(target), ticket.patient, via=TicketVia.TRANSFER,
                                   actor=actor)
        await self.conn.execute("UPDATE tickets SET transferred_to = $2 WHERE id = $1", ticket.id,
                                 uuid.UUID(issued[0].ticket_id))
        await self.audit(dept, actor, "transfer", reason, {"ticket": ticket.label, "department": dept.code},
                         {"ticket": issued[0].ticket, "department": target.code})
        approaching = await self._approaching(dept) if ticket.state == "waiting" else []
        return [ended, *issued, *approaching, await self.status_changed(dept)]

    async def report_position(self, tenant_id: str, dept: Department | None, patient: Patient) -> list[Event]:
        held = [(d, t) for d, t in await self.active_tickets_of(tenant_id, patient.chat_id)
                if dept is None or d.id == dept.id]
        if not held:
            return [PositionReported(department=dept.code if dept else None,
                                     department_name=dept.name if dept else None, patient=patient,
                                     is_open=(await self.status(dept)).is_open if dept else None)]
        events: list[Event] = []
        for d, t in held:
            status = await self.status(d)
            position = await self.position(t.id) if t.state == "waiting" else None
            events.append(PositionReported(
                department=d.code, department_name=d.name, patient=t.patient, ticket=t.label,
                position=position or None, estimated_wait_s=self.estimate(d, status, position) if position else None,
                is_open=status.is_open))
        return events

    async def leave(self, tenant_id: str, dept: Department | None, patient: Patient) -> list[Event]:
        held = [(d, t) for d, t in await self.active_tickets_of(tenant_id, patient.chat_id)
                if dept is None or d.id == dept.id]
        if not held:
            return await self.report_position(tenant_id, dept, patient)
        events: list[Event] = []
        for d, t in held:
            events += await self.finish(d, t, TicketOutcome.CANCELLED, actor="patient", reason="left")
        return events

    async def subscribe(self, dept: Department, patient: Patient) -> list[Event]:
        # Locked like an opening, so a subscription cannot slip in beside one and be forgotten.
        status = await self.status(dept, lock=True)
        if not status.is_open:
            await self.conn.execute(
                "INSERT INTO opening_subscriptions (department_id, chat_id, phone, patient_name, language, created_at)"
                " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (department_id, chat_id) DO UPDATE SET"
                " phone = EXCLUDED.phone, patient_name = EXCLUDED.patient_name, language = EXCLUDED.language",
                dept.id, patient.chat_id, patient.phone, patient.name, patient.language, self.now)
        return [OpeningSubscribed(department=dept.code, department_name=dept.name, patient=patient,
                                  is_open=status.is_open)]

    async def refresh_average(self, dept: Department) -> None:
        since = self.now - timedelta(days=SERVICE_WINDOW_DAYS)
        average = await self.conn.fetchval(_AVERAGE_SERVICE, dept.id, since, SERVICE_SAMPLE)
        await self.conn.execute("UPDATE queue_status SET avg_service_s = $2 WHERE department_id = $1",
                                dept.id, float(average) if average is not None else None)

    async def _approaching(self, dept: Department) -> list[Event]:
        status = await self.status(dept)
        rows = await self.conn.fetch(_NEWLY_ALMOST, dept.id, dept.almost_position, self.now)
        return [TurnApproaching(department=dept.code, department_name=dept.name, ticket=r["label"],
                                ticket_id=str(r["id"]), patient=patient_of(r), position=r["position"],
                                estimated_wait_s=self.estimate(dept, status, r["position"]))
                for r in sorted(rows, key=lambda r: r["position"])]

    async def _set_current(self, dept: Department, label: str) -> None:
        await self.conn.execute("UPDATE queue_status SET current_ticket = $2 WHERE department_id = $1", dept.id, label)

    async def _current_state(self, ticket: Ticket) -> Ticket:
        row = await self.conn.fetchrow(f"SELECT {_TICKET_COLUMNS} FROM tickets WHERE id = $1", ticket.id)
        return _ticket(row)

    def ended(self, dept: Department, ticket: Ticket, outcome: TicketOutcome, actor: str,
               reason: str | None) -> TicketEnded:
        return TicketEnded(department=dept.code, department_name=dept.name, ticket=ticket.label,
                           ticket_id=str(ticket.id), patient=ticket.patient, outcome=outcome, by=actor, reason=reason)

    async def expire_stale(self, dept: Department) -> list[Event]:
        """Tickets left active from an earlier day: cancelled, unless the department carries waiting ones over."""
        today = service_day(self.now, dept.zone)
        states = ["called"] if dept.on_close == "carry_over" else ["waiting", "called"]
        await self.status(dept, lock=True)
        rows = await self.conn.fetch(
            f"UPDATE tickets SET state = 'cancelled', finished_at = $3, end_reason = 'expired'"
            f" WHERE department_id = $1 AND service_day < $2 AND state = ANY($4::text[]) RETURNING {_TICKET_COLUMNS}",
            dept.id, today, self.now, states)
        if not rows:
            return []
        ended = [self.ended(dept, _ticket(r), TicketOutcome.CANCELLED, "schedule", "expired") for r in rows]
        return [*ended, await self.status_changed(dept)]
