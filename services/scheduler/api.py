"""The staff API: departments, schedules, queue status, audit log and tickets.

Every route authenticates a tenant API key and reads or changes only that tenant's rows: a
department is found by (tenant, code) and a ticket by (tenant, id), so another tenant's is 404.
Changes and their events commit together through the outbox.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import time
from typing import Annotated, Any, Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from aiohttp import web
from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.events import db, outbox
from shared.events.auth import Principal, Role
from shared.events.catalog import DepartmentCode, Patient, TicketOutcome, TicketRefused, TicketVia
from shared.events.envelope import Envelope, Event
from shared.events.http import CORRELATION_HEADER, Invalid, NotFound, json_row, json_value, uuid_or_404
from shared.events.runtime import API_KEYS, POOL
from shared.phones import InvalidPhone, chat_of_phone, to_e164

from .queues import DEPARTMENT_COLUMNS, Department, QueueConflict, Queues, department_of

T = TypeVar("T")

BODY = ConfigDict(extra="forbid", str_strip_whitespace=True)
_WEEKDAYS = {name: i for i, name in enumerate(("mon", "tue", "wed", "thu", "fri", "sat", "sun"), start=1)}


def _zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError("unknown IANA timezone (e.g. Africa/Casablanca, Asia/Jerusalem)") from None
    return value


def _region(value: str) -> str:
    value = value.upper()
    if value not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError("unknown ISO 3166 region (e.g. MA, IL, FR)")
    return value


Timezone = Annotated[str, AfterValidator(_zone)]
Region = Annotated[str, AfterValidator(_region)]
Text = Annotated[str, Field(min_length=1, max_length=500)]


class DepartmentBody(BaseModel):
    model_config = BODY
    code: DepartmentCode
    name: str = Field(min_length=1, max_length=120)
    timezone: Timezone
    phone_region: Region
    ticket_prefix: str | None = Field(None, pattern=r"^[A-Za-z0-9]{1,8}$")
    on_close: Literal["cancel", "carry_over"] = "cancel"
    almost_position: int = Field(3, ge=1, le=100)
    default_service_s: float = Field(300, gt=0, le=86400)


class DepartmentChanges(BaseModel):
    model_config = BODY
    name: str | None = Field(None, min_length=1, max_length=120)
    timezone: Timezone | None = None
    phone_region: Region | None = None
    ticket_prefix: str | None = Field(None, pattern=r"^[A-Za-z0-9]{1,8}$")
    on_close: Literal["cancel", "carry_over"] | None = None
    almost_position: int | None = Field(None, ge=1, le=100)
    default_service_s: float | None = Field(None, gt=0, le=86400)


class OpeningHours(BaseModel):
    model_config = BODY
    weekday: int = Field(ge=1, le=7, description="1 = Monday … 7 = Sunday, or mon … sun")
    opens_at: time
    closes_at: time

    @field_validator("opens_at", "closes_at")
    @classmethod
    def _local(cls, value: time) -> time:
        if value.tzinfo is not None:
            raise ValueError("a time of day without an offset: the department's timezone applies")
        return value

    @field_validator("weekday", mode="before")
    @classmethod
    def _named_day(cls, value: Any) -> Any:
        if isinstance(value, str) and value[:3].lower() in _WEEKDAYS:
            return _WEEKDAYS[value[:3].lower()]
        return value

    @model_validator(mode="after")
    def _in_order(self) -> OpeningHours:
        if self.closes_at <= self.opens_at:
            raise ValueError("closes_at must be after opens_at (split a range that crosses midnight in two)")
        return self


class ScheduleBody(BaseModel):
    model_config = BODY
    hours: list[OpeningHours] = Field(max_length=100)

    @model_validator(mode="after")
    def _no_overlap(self) -> ScheduleBody:
        by_day = sorted(self.hours, key=lambda h: (h.weekday, h.opens_at))
        for a, b in zip(by_day, by_day[1:], strict=False):
            if a.weekday == b.weekday and b.opens_at < a.closes_at:
                raise ValueError(f"hours overlap on weekday {a.weekday}")
        return self


class OverrideBody(BaseModel):
    model_config = BODY
    is_open: bool
    starts_at: AwareDatetime | None = None
    ends_at: AwareDatetime
    reason: Text


class StatusChange(BaseModel):
    model_config = BODY
    reason: Text | None = None
    message: Text | None = None
    closes_at: AwareDatetime | None = None


class JoinBody(BaseModel):
    model_config = BODY
    phone: str = Field(min_length=3, max_length=32)
    name: str | None = Field(None, max_length=120)
    language: Literal["en", "fr", "ar", "he"] | None = None


class CallBody(BaseModel):
    model_config = BODY
    counter: str | None = Field(None, min_length=1, max_length=32)


class ReasonBody(BaseModel):
    model_config = BODY
    reason: Text | None = None


class TransferBody(BaseModel):
    model_config = BODY
    department: DepartmentCode
    reason: Text | None = None


class TicketQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")
    state: Literal["waiting", "called", "served", "no_show", "cancelled", "transferred", "active"] = "active"
    limit: int = Field(100, ge=1, le=500)


class AuditQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")
    department: DepartmentCode | None = None
    since: AwareDatetime | None = None
    until: AwareDatetime | None = None
    before: int | None = Field(None, ge=1, description="the `next` cursor of the previous page")
    limit: int = Field(100, ge=1, le=500)


# --- plumbing ---------------------------------------------------------------------------------


async def _body(request: web.Request, model: type[T]) -> T:
    raw = await request.read()
    return model.model_validate(json.loads(raw) if raw else {})  # type: ignore[attr-defined]


def _actor(principal: Principal) -> str:
    return f"key:{principal.key_id}"


async def _change(request: web.Request, principal: Principal,
                  work: Callable[[Queues], Awaitable[tuple[T, list[Event]]]]) -> T:
    """Run a change in one transaction, its events in the same one through the outbox."""
    correlation = request.headers.get(CORRELATION_HEADER)
    async with db.transaction(request.app[POOL]) as conn:
        result, events = await work(Queues(conn))
        await outbox.add(conn, [Envelope.new(e, tenant_id=principal.tenant_id, correlation_id=correlation)
                                for e in events])
    return result


async def _read(request: web.Request, work: Callable[[Queues], Awaitable[T]]) -> T:
    async with db.transaction(request.app[POOL]) as conn:
        return await work(Queues(conn))


async def _department(queues: Queues, principal: Principal, code: str) -> Department:
    dept = await queues.department(principal.tenant_id, code)
    if dept is None:
        raise NotFound(f"no department {code.upper()}")
    return dept


def _ticket_id(value: str) -> uuid.UUID:
    return uuid_or_404(value, "ticket")


def _department_json(dept: Department) -> dict[str, Any]:
    return {k: json_value(v) for k, v in dept.__dict__.items() if k not in ("id", "tenant_id")}


async def _status_json(queues: Queues, dept: Department) -> dict[str, Any]:
    status = await queues.status(dept)
    waiting = await queues.waiting(dept)
    return {"department": dept.code, "name": dept.name, "timezone": dept.timezone, "is_open": status.is_open,
            "since": json_value(status.since), "changed_by": status.changed_by, "reason": status.reason,
            "message": status.message, "closes_at": json_value(status.closes_at), "waiting": waiting,
            "estimated_wait_s": queues.estimate(dept, status, waiting + 1) if status.is_open else None,
            "current_ticket": status.current_ticket, "average_service_s": status.avg_service_s}


_TICKET_VIEW = """
SELECT t.id, d.code AS department, t.label AS ticket, t.state, t.chat_id, t.phone, t.patient_name AS name,
       t.language, t.joined_via, t.counter, t.recalls, t.issued_at, t.called_at, t.finished_at, t.end_reason,
       t.service_day,
       CASE WHEN t.state = 'waiting' THEN (
           SELECT count(*) FROM tickets w WHERE w.department_id = t.department_id AND w.state = 'waiting'
             AND (w.queued_at, w.id) <= (t.queued_at, t.id)) END AS position
FROM tickets t JOIN departments d ON d.id = t.department_id
"""


async def _ticket_json(queues: Queues, tenant_id: str, ticket_id: uuid.UUID) -> dict[str, Any]:
    row = await queues.conn.fetchrow(_TICKET_VIEW + " WHERE t.tenant_id = $1 AND t.id = $2", tenant_id, ticket_id)
    if row is None:
        raise NotFound("no such ticket")
    return json_row(row)


# --- departments and schedules ----------------------------------------------------------------


async def list_departments(request: web.Request) -> web.Response:
    principal = await request.app[API_KEYS].authenticate(request, Role.VIEWER)
    departments = await _read(request, lambda q: q.departments(principal.tenant_id))
    return web.json_response({"items": [_department_json(d) for d in departments]})


async def create_department(request: web.Request) -> web.Response:
    principal = await request.app[API_KEYS].authenticate(request, Role.ADMIN)
    body = await _body(request, DepartmentBody)

    async def work(queues: Queues):
        # ON CONFLICT: two creates at once must give one 201 and one 409, not a 500.
        row = await queues.conn.fetchrow(
            f"INSERT INTO departments (id, tenant_id, code, name, timezone, ticket_prefix, phone_region, on_close,"
            f" almost_position, default_service_s) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
            f" ON CONFLICT (tenant_id, code) DO NOTHING RETURNING {DEPARTMENT_COLUMNS}",
            uuid.uuid4(), principal.tenant_id, body.code, body.name, body.timezone,
            (body.ticket_prefix or body.code.replace("-", "").replace("_", "")[:8]).upper(), body.phone_region,
            body.on_close, body.almost_position, body.default_service_s)
        if row is None:
            raise QueueConflict(f"department {body.code} already exists", department=body.code)
        dept = department_of(row)
        await queues.conn.execute(
            "INSERT INTO queue_status (department_id, is_open, since, changed_by) VALUES ($1, false, $2, $3)",
            dept.id, queues.now, _actor(principal))
        await queues.audit(dept, _actor(principal), "create_department", None, None, _department_json(dept))
        return dept, []

    dept = await _change(request, principal, work)
    return web.json_response(_department_json(dept), status=201)


async def get_department(request: web.Request) -> web.Response:
    principal = await request.app[API_KEYS].authenticate(request, Role.VIEWER)
    dept = await _read(request, lambda q: _department(q, principal, request.match_info["code"]))
    return web.json_response(_department_json(dept))


async def update_department(request: web.Request) -> web.Response:
    principal = await request.app[API_KEYS].authenticate(request, Role.ADMIN)
    changes = (await _body(request, DepartmentChanges)).model_dump(exclude_none=True)
    if "ticket_prefix" in changes:
        changes["ticket_prefix"] = changes["ticket_prefix"].upper()

    async def work(queues: Queues):
        dept = await _department(queues, principal, request.match_info["code"])
        if changes:
            assignments = ", ".join(f"{column} = ${i}" for i, column in enumerate(changes, start=2))
            row = await queues.conn.fetchrow(
                f"UPDATE departments SET {assignments} WHERE id = $1 RETURNING {DEPARTMENT_COLUMNS}",
                dept.id, *changes.values())
            updated = department_of(row)
            await queues.audit(dept, _actor(principal), "update_department", None, _department_json(dept),
                               _department_json(updated))
            dept = updated
        return dept, []

    return web.json_response(_department_json(await _change(request, principal, work)))


async def delete_department(request: web.Request) -> web.Response:
    principal = await request.app[API_KEYS].authenticate(request, Role.ADMIN)

    async def work(queues: Queues):
        dept = await _department(queues, principal, request.match_info["code"])
        await queues.status(dept, lock=True)
        if await queues.conn.fetchval(
                "SELECT count(*) FROM tickets WHERE department_id = $1 AND state IN ('waiting', 'called')", dept.id):
            raise QueueConflict(f"department {dept.code} still has active tickets", department=dept.code)
        await queues.conn.execute("DELETE FROM departments WHERE id = $1", dept.id)
        return None, []

    await _change(request, principal, work)
    return web.Response(status=204)


async def get_schedule(request: web.Request) -> web.Response:
    principal = await request.app[API_KEYS].authenticate(request, Role.VIEWER)

    async def work(queues: Queues):
        dept = await _department(queues, principal, request.match_info["code"])
        return await _schedule_json(queues, dept)

    return web.json_response(await _read(request, work))


async def _schedule_json(queues: Queues, dept: Department) -> dict[str, Any]:
    hours = await queues.conn.fetch(
        "SELECT weekday, opens_at, closes_at FROM schedules WHERE department_id = $1 ORDER BY weekday, opens_at",
        dept.id)
    overrides = await queues.conn.fetch(
        "SELECT id, is_open, starts_at, ends_at, reason, created_by, created_at FROM overrides"
        " WHERE department_id = $1 AND ends_at > $2 ORDER BY starts_at", dept.id, queues.now)
    calendar = await queues.calendar(dept)
    plan = calendar.plan_at(queues.now)
    return {"department": dept.code, "timezone": dept.timezone,
            "hours": [{"weekday": h["weekday"], "opens_at": h["opens_at"].strftime("%H:%M:%S"),
                       "closes_at": h["closes_at"].strftime("%H:%M:%S")} for h in hours],
            "overrides": [json_row(o) for o in overrides],
            "planned_now": {"is_open": plan.is_open, "reason": plan.reason},
            "next_closing": json_value(calendar.next_closing(queues.now))}


async def put_schedule(request: web.Request) -> web.Response:
    principal = await request.app[API_KEYS].authenticate(request, Role.ADMIN)
    body = await _body(request, ScheduleBody)

    async def work(queues: Queues):
        dept = await _department(queues, principal, request.match_info["code"])
        before = await _schedule_json(queues, dept)
        await queues.conn.execute("DELETE FROM schedules WHERE department_id = $1", dept.id)
        await queues.conn.executemany(
            "INSERT INTO schedules (department_id, weekday, opens_at, closes_at) VALUES ($1, $2, $3, $4)",
            [(dept.id, h.weekday, h.opens_at, h.closes_at) for h in body.hours])
        after = await _schedule_json(queues, dept)
        await queues.audit(dept, _actor(principal), "set_schedule", None, {"hours": before["hours"]},
                           {"hours": after["hours"]})
        return after, []

    return web.json_response(await _change(request, principal, work))


async def add_override(request: web.Request) -> web.Response:
    principal = await request.app[API_KEYS].authenticate(request, Role.STAFF)
    body = await _body(request, OverrideBody)

    async def work(queues: Queues):
        dept = await _department(queues, principal, request.match_info["code"])
        starts_at = body.starts_at or queues.now
        if body.ends_at <= starts_at:
            raise Invalid("ends_at", "must be after starts_at (or after now)")
        if body.ends_at <= queues.now:
            raise Invalid("ends_at", "must be in the future")
        row = await queues.conn.fetchrow(
            "INSERT INTO overrides (id, department_id, is_open, starts_at, ends_at, reason, created_by)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id, is_open, starts_at, ends_at, reason, created_by",
            uuid.uuid4(), dept.id, body.is_open, starts_at, body.ends_at, body.reason, _actor(principal))
        await queues.audit(dept, _actor(principal), "add_override", body.reason, None, json_row(row))
        return json_row(row), []

    return web.json_response(await _change(request, principal, work), status=201)


async def delete_override(request: web.Request) -> web.Response:
    principal = await request.app[API_KEYS].authenticate(request, Role.STAFF)
    override_id = uuid_or_404(request.match_info["id"], "override")

    async def work(queues: Queues):
        dept = await _department(queues, principal, request.match_info["code"])
        row = await queues.conn.fetchrow(
            "DELETE FROM overrides WHERE id = $1 AND department_id = $2"
            " RETURNING id, is_open, starts_at, ends_at, reason", override_id, dept.id)
        if row is None:
            raise NotFound("no such override")
        await queues.audit(dept, _actor(principal), "remove_override", None, json_row(row), None)
        return None, []

    await _change(request, principal, work)
    return web.Response(status=204)


# --- queue status -----------------------------------------------------------------------------


async def open_queue(request: web.Request) -> web.Response:
    return await _set_open(request, True)


async def close_queue(request: web.Request) -> web.Response:
    return await _set_open(request, False)


async def _set_open(request: web.Request, is_open: bool) -> web.Response:
    principal = await request.app[API_KEYS].authenticate(request, Role.STAFF)
    body = await _body(request, StatusChange)
    if not is_open and body.closes_at is not None:
        raise Invalid("closes_at", "only an opening takes a closing time")

    async def work(queues: Queues):
        dept = await _department(queues, principal, request.match_info["code"])
        if body.closes_at is not None and body.closes_at <= queues.now:
            raise Invalid("closes_at", "must be in the future")
        if is_open:
            events = await queues.open(dept, actor=_actor(principal), reason=body.reason, message=body.message,
                                       closes_at=body.closes_at)
        else:
            events = await queues.close(dept, actor=_actor(principal), reason=body.reason, message=body.message)
        return {**await _status_json(queues, dept), "changed": bool(events)}, events

    return web.json_response(await _change(request, principal, work))


async def department_status(request: web.Request) -> web.Response:
    principal = await request.app[API_KEYS].authenticate(request, Role.VIEWER)

    async def work(queues: Queues):
        return await _status_json(queues, await _department(queues, principal, request.match_info["code"]))

    return web.json_response(await _read(request, work))


async def all_statuses(request: web.Request) -> web.Response:
    principal = await request.app[API_KEYS].authenticate(request, Role.VIEWER)

    async def work(queues: Queues):
        return [await _status_json(queues, d) for d in await queues.departments(principal.tenant_id)]

    return web.json_response({"items": await _read(request, work)})


async def audit_log(request: web.Request) -> web.Response:
    principal = await request.app[API_KEYS].authenticate(request, Role.VIEWER)
    query = AuditQuery.model_validate(dict(request.query))

    async def work(queues: Queues):
        department_id = None
        if query.department:
            department_id = (await _department(queues, principal, query.department)).id
        return await queues.conn.fetch(
            "SELECT a.id, d.code AS department, a.at, a.actor, a.action, a.reason, a.before, a.after"
            " FROM queue_audit a JOIN departments d ON d.id = a.department_id"
            " WHERE a.tenant_id = $1 AND ($2::uuid IS NULL OR a.department_id = $2)"
            " AND ($3::timestamptz IS NULL OR a.at >= $3) AND ($4::timestamptz IS NULL OR a.at < $4)"
            " AND ($5::bigint IS NULL OR a.id < $5) ORDER BY a.id DESC LIMIT $6",
            principal.tenant_id, department_id, query.since, query.until, query.before, query.limit)

    rows = await _read(request, work)
    items = [{**json_row(r), "before": _jsonb(r["before"]), "after": _jsonb(r["after"])} for r in rows]
    return web.json_response({"items": items, "next": rows[-1]["id"] if len(rows) == query.limit else None})


def _jsonb(value: str | None) -> Any:
    return json.loads(value) if value is not None else None


# --- tickets ----------------------------------------------------------------------------------


async def list_tickets(request: web.Request) -> web.Response:
    principal = await request.app[API_KEYS].authenticate(request, Role.VIEWER)
    query = TicketQuery.model_validate(dict(request.query))
    states = ["waiting", "called"] if query.state == "active" else [query.state]

    async def work(queues: Queues):
        dept = await _department(queues, principal, request.match_info["code"])
        return await queues.conn.fetch(
            _TICKET_VIEW + " WHERE t.department_id = $1 AND t.state = ANY($2::text[])"
            " ORDER BY t.state = 'waiting', t.queued_at, t.id LIMIT $3", dept.id, states, query.limit)

    return web.json_response({"items": [json_row(r) for r in await _read(request, work)]})


async def join_for_patient(request: web.Request) -> web.Response:
    principal = await request.app[API_KEYS].authenticate(request, Role.STAFF)
    body = await _body(request, JoinBody)

    async def work(queues: Queues):
        dept = await _department(queues, principal, request.match_info["code"])
        try:
            phone = to_e164(body.phone, dept.phone_region)
        except InvalidPhone as exc:
            raise Invalid("phone", exc.reason) from None
        patient = Patient(chat_id=chat_of_phone(phone), phone=phone, name=body.name, language=body.language)
        events = await queues.join(dept, patient, via=TicketVia.STAFF, actor=_actor(principal))
        refused = next((e for e in events if isinstance(e, TicketRefused)), None)
        if refused is not None:  # staff see the refusal here; nothing is sent to the patient
            raise QueueConflict(refused.reason, code=refused.code.value, ticket=refused.ticket,
                                position=refused.position)
        return await _ticket_json(queues, principal.tenant_id, uuid.UUID(events[0].ticket_id)), events

    return web.json_response(await _change(request, principal, work), status=201)


async def call_next(request: web.Request) -> web.Response:
    principal = await request.app[API_KEYS].authenticate(request, Role.STAFF)
    body = await _body(request, CallBody)

    async def work(queues: Queues):
        dept = await _department(queues, principal, request.match_info["code"])
        events = await queues.call_next(dept, actor=_actor(principal), counter=body.counter)
        return await _ticket_json(queues, principal.tenant_id, uuid.UUID(events[0].ticket_id)), events

    return web.json_response(await _change(request, principal, work))


async def get_ticket(request: web.Request) -> web.Response:
    principal = await request.app[API_KEYS].authenticate(request, Role.VIEWER)
    ticket_id = _ticket_id(request.match_info["id"])
    return web.json_response(await _read(request, lambda q: _ticket_json(q, principal.tenant_id, ticket_id)))


def _ticket_action(action: Callable[[Queues, Department, Any, Any, str], Awaitable[list[Event]]],
                   body_model: type[BaseModel] = ReasonBody):
    async def handle(request: web.Request) -> web.Response:
        principal = await request.app[API_KEYS].authenticate(request, Role.STAFF)
        ticket_id = _ticket_id(request.match_info["id"])
        body = await _body(request, body_model)

        async def work(queues: Queues):
            ticket = await queues.ticket(principal.tenant_id, ticket_id)
            if ticket is None:
                raise NotFound("no such ticket")
            dept = await queues.department_by_id(ticket.department_id)
            events = await action(queues, dept, ticket, body, _actor(principal))
            return await _ticket_json(queues, principal.tenant_id, ticket_id), events

        return web.json_response(await _change(request, principal, work))

    return handle


async def _recall(queues: Queues, dept: Department, ticket, body, actor: str) -> list[Event]:
    return await queues.recall(dept, ticket, actor=actor)


def _finish(outcome: TicketOutcome):
    async def finish(queues: Queues, dept: Department, ticket, body: ReasonBody, actor: str) -> list[Event]:
        return await queues.finish(dept, ticket, outcome, actor=actor, reason=body.reason)

    return finish


async def _transfer(queues: Queues, dept: Department, ticket, body: TransferBody, actor: str) -> list[Event]:
    target = await queues.department(dept.tenant_id, body.department)
    if target is None:
        raise Invalid("department", f"no department {body.department}")
    return await queues.transfer(dept, ticket, target, actor=actor, reason=body.reason)


routes = [
    web.get("/v1/departments", list_departments),
    web.post("/v1/departments", create_department),
    web.get("/v1/departments/{code}", get_department),
    web.patch("/v1/departments/{code}", update_department),
    web.delete("/v1/departments/{code}", delete_department),
    web.get("/v1/departments/{code}/schedule", get_schedule),
    web.put("/v1/departments/{code}/schedule", put_schedule),
    web.post("/v1/departments/{code}/overrides", add_override),
    web.delete("/v1/departments/{code}/overrides/{id}", delete_override),
    web.post("/v1/departments/{code}/open", open_queue),
    web.post("/v1/departments/{code}/close", close_queue),
    web.get("/v1/departments/{code}/status", department_status),
    web.get("/v1/status", all_statuses),
    web.get("/v1/audit", audit_log),
    web.get("/v1/departments/{code}/tickets", list_tickets),
    web.post("/v1/departments/{code}/tickets", join_for_patient),
    web.post("/v1/departments/{code}/call-next", call_next),
    web.get("/v1/tickets/{id}", get_ticket),
    web.post("/v1/tickets/{id}/recall", _ticket_action(_recall)),
    web.post("/v1/tickets/{id}/served", _ticket_action(_finish(TicketOutcome.SERVED))),
    web.post("/v1/tickets/{id}/no-show", _ticket_action(_finish(TicketOutcome.NO_SHOW))),
    web.post("/v1/tickets/{id}/cancel", _ticket_action(_finish(TicketOutcome.CANCELLED))),
    web.post("/v1/tickets/{id}/transfer", _ticket_action(_transfer, TransferBody)),
]
