"""Broadcasts, notification status and operations; every query is scoped to the caller's tenant."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from shared.events import db, outbox
from shared.events.auth import Principal, Role
from shared.events.catalog import DepartmentCode
from shared.events.http import Conflict, Invalid, NotFound, json_row, problem, uuid_or_404
from shared.events.runtime import API_KEYS, POOL, STOPPING

from . import audiences, handlers, sending, templates
from .handlers import sender_of
from .numbers import Numbers
from .providers import SendFailed
from .sending import WAKE_SENDER, Sender, broadcast_progress

log = logging.getLogger(__name__)

SENDER = web.AppKey("sender", Sender)
NUMBERS = web.AppKey("numbers", Numbers)
ITEMS = 100
INVALID_SHOWN = 20


class NotificationGauges:
    def __init__(self, registry: CollectorRegistry):
        self.pending = Gauge("wabus_notifier_pending", "Notifications queued, sending or in doubt", registry=registry)
        self.sent_5m = Gauge("wabus_notifier_sent_last_5m", "Sent in the last 5 minutes", registry=registry)
        self.failed_5m = Gauge("wabus_notifier_failed_last_5m", "Failed in the last 5 minutes", registry=registry)
        self.active_broadcasts = Gauge("wabus_notifier_active_broadcasts", "Broadcasts still sending",
                                       registry=registry)


GAUGES = web.AppKey("gauges", NotificationGauges)

_COUNTS = """
SELECT count(*) FILTER (WHERE status IN ('queued', 'sending', 'unknown')) AS pending_count,
       count(*) FILTER (WHERE status IN ('sent', 'delivered', 'read') AND sent_at > $2) AS sent_last_5m,
       count(*) FILTER (WHERE status = 'failed' AND failed_at > $2) AS failed_last_5m,
       (SELECT count(*) FROM broadcasts WHERE ($1::text IS NULL OR tenant_id = $1)
          AND status IN ('accepted', 'queued', 'running')) AS active_broadcasts
FROM notifications WHERE ($1::text IS NULL OR tenant_id = $1)
  AND (status IN ('queued', 'sending', 'unknown') OR sent_at > $2 OR failed_at > $2)
"""


async def counts(conn, tenant_id: str | None, now: datetime) -> dict[str, int]:
    return dict(await conn.fetchrow(_COUNTS, tenant_id, now - timedelta(minutes=5)))


async def refresh_gauges(app: web.Application, every_s: float) -> None:
    """The JSON metrics, for every tenant together, as Prometheus gauges."""
    stopping = app[STOPPING]
    while not stopping.is_set():
        try:
            async with asyncio.timeout(every_s), app[POOL].acquire() as conn:
                current = await counts(conn, None, datetime.now(UTC))
            gauges = app[GAUGES]
            gauges.pending.set(current["pending_count"])
            gauges.sent_5m.set(current["sent_last_5m"])
            gauges.failed_5m.set(current["failed_last_5m"])
            gauges.active_broadcasts.set(current["active_broadcasts"])
        except Exception as exc:  # noqa: BLE001 - a missed refresh leaves the last values
            log.warning("notification gauges not refreshed", extra={"error": str(exc)})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), timeout=every_s)


class DepartmentPatients(BaseModel):
    """A department's patients as recipients: those waiting in its queue, waiting for it to open, or both."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    department: DepartmentCode
    patients: audiences.Audience = audiences.Audience.WAITING


def _recipient_kind(value: object) -> str | None:
    if isinstance(value, str):
        return "phone"
    return "department" if isinstance(value, dict | DepartmentPatients) else None


Recipient = Annotated[
    Annotated[str, Tag("phone")] | Annotated[DepartmentPatients, Tag("department")],
    Discriminator(_recipient_kind, custom_error_type="recipient", custom_error_message=(
        'a phone number, or {"department": …, "patients": "waiting"|"subscribed"|"all"}')),
]


class BroadcastBody(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    message: str | None = Field(None, min_length=1, max_length=4096)
    template: str | None = None
    parameters: dict[str, str | int | float] = Field(default_factory=dict)
    language: str | None = None
    recipients: list[Recipient] = Field(min_length=1, max_length=100_000)

    @model_validator(mode="after")
    def _one_text(self) -> BroadcastBody:
        if (self.message is None) == (self.template is None):
            raise ValueError("give either a message or a template")
        if self.template is not None and self.template not in templates.BUILT_IN:
            raise ValueError(f"unknown template {self.template!r}; known: {sorted(templates.BUILT_IN)}")
        return self


async def _sender(conn, tenant_id: str) -> handlers.Sender:
    try:
        return await sender_of(conn, tenant_id)
    except handlers.NoSender as exc:
        raise Conflict(str(exc)) from None


def _fingerprint(text: str, phones: list[str]) -> str:
    return hashlib.sha256(json.dumps([text, sorted(phones)]).encode()).hexdigest()


def _not_connected(session: str, why: str) -> web.Response:
    response = problem(503, "WhatsApp session not connected", code="WHATSAPP_NOT_CONNECTED", session=session,
                       reason=why)
    response.headers["Retry-After"] = "30"
    return response


# The row bears the start of the request now answering for the key: the first one, or the retry
# that took over a key its first request left pending (killed, or cut from the database before it
# could let go of it). Only the holder of that start may keep an answer or let go of the key.
_TAKE_KEY = """
INSERT INTO idempotency_keys (tenant_id, key, request_hash, created_at) VALUES ($1, $2, $3, $4)
ON CONFLICT DO NOTHING RETURNING true
"""
# One retry wins: the others wait on the row and then see the new start, or the answer.
_TAKE_OVER_KEY = """
UPDATE idempotency_keys SET created_at = $4
WHERE tenant_id = $1 AND key = $2 AND request_hash = $3 AND status_code IS NULL AND created_at < $5
RETURNING true
"""
_EARLIER = "SELECT request_hash, status_code, response FROM idempotency_keys WHERE tenant_id = $1 AND key = $2"
_HOLD_KEY = """
SELECT true FROM idempotency_keys
WHERE tenant_id = $1 AND key = $2 AND created_at = $3 AND status_code IS NULL FOR UPDATE
"""
_KEEP_ANSWER = """
UPDATE idempotency_keys SET status_code = $4, response = $5::jsonb
WHERE tenant_id = $1 AND key = $2 AND created_at = $3 AND status_code IS NULL
"""
_LET_GO = "DELETE FROM idempotency_keys WHERE tenant_id = $1 AND key = $2 AND created_at = $3 AND status_code IS NULL"


@dataclass
class _KeyClaim:
    """An Idempotency-Key this request answers for, as long as no retry has taken it over."""

    tenant_id: str
    key: str
    started_at: datetime
    kept: bool = False

    async def hold(self, conn) -> None:
        """Lock the key until the transaction ends; a request taken over must change nothing."""
        if not await conn.fetchval(_HOLD_KEY, self.tenant_id, self.key, self.started_at):
            raise Conflict("a retry with this Idempotency-Key took this request over", field="Idempotency-Key")

    async def keep(self, conn, status: int, answer: str) -> None:
        await conn.execute(_KEEP_ANSWER, self.tenant_id, self.key, self.started_at, status, answer)
        self.kept = True

    async def let_go(self, pool) -> None:
        """Nothing was kept: the key may be used again."""
        async with db.transaction(pool) as conn:
            await conn.execute(_LET_GO, self.tenant_id, self.key, self.started_at)


async def create_broadcast(request: web.Request) -> web.Response:
    principal = await request.app[API_KEYS].authenticate(request, Role.STAFF)
    raw = await request.read()
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return await _create_broadcast(request, principal, raw)
    request_hash = hashlib.sha256(raw).hexdigest()
    pool = request.app[POOL]
    now = datetime.now(UTC)
    abandoned = now - timedelta(seconds=request.app[SENDER].settings.idempotency_pending_s)
    async with db.transaction(pool) as conn:
        taken = await conn.fetchval(_TAKE_KEY, principal.tenant_id, key, request_hash, now)
        if not taken:
            taken = await conn.fetchval(_TAKE_OVER_KEY, principal.tenant_id, key, request_hash, now, abandoned)
            if taken:
                log.warning("abandoned idempotency key taken over", extra={"key": key})
            else:
                earlier = await conn.fetchrow(_EARLIER, principal.tenant_id, key)
    if not taken:
        if earlier is None:  # its first request failed and let go of it just now
            return problem(409, "a request with this Idempotency-Key has just failed; try again",
                           field="Idempotency-Key")
        if earlier["request_hash"] != request_hash:
            raise Invalid("Idempotency-Key", "this key was first used with another request body")
        if earlier["status_code"] is None:
            return problem(409, "a request with this Idempotency-Key is still in flight", field="Idempotency-Key")
        return web.json_response(json.loads(earlier["response"]), status=earlier["status_code"],
                                 headers={"Idempotent-Replayed": "true"})
    claim = _KeyClaim(principal.tenant_id, key, now)
    try:
        response = await _create_broadcast(request, principal, raw, claim)
    except BaseException:
        await claim.let_go(pool)
        raise
    if response.status >= 500:
        await claim.let_go(pool)
    elif not claim.kept:
        # An answer that changed nothing (a 400, say): kept on its own.
        async with db.transaction(pool) as conn:
            await claim.keep(conn, response.status, response.text)
    return response


async def _create_broadcast(request: web.Request, principal: Principal, raw: bytes,
                            claim: _KeyClaim | None = None) -> web.Response:
    body = BroadcastBody.model_validate(json.loads(raw) if raw else {})
    pool, sender_loop = request.app[POOL], request.app[SENDER]
    async with pool.acquire() as conn:
        sender = await _sender(conn, principal.tenant_id)
        held = await conn.fetchrow("SELECT status, can_send FROM sessions WHERE session = $1", sender.session)
    if held is not None and not held["can_send"]:
        return _not_connected(sender.session, f"the session is {held['status']}")
    check = await _session_check(sender_loop, sender.session, request)
    if check is not None:
        return check

    language = templates.language_of(body.language, sender.locale)
    text = body.message or templates.render(body.template, language, body.parameters, sender.templates)
    recipients = await _recipients(pool, request.app[NUMBERS], principal.tenant_id, sender, body.recipients)
    valid, invalid, from_departments = recipients.valid, recipients.invalid, recipients.departments
    if not valid:
        return problem(400, "no valid recipient", field="recipients", total_recipients=recipients.total,
                       invalid_recipients_count=len(invalid), invalid_recipients=invalid[:INVALID_SHOWN],
                       departments=from_departments)

    phones = list(valid)
    fingerprint = _fingerprint(text, phones)
    now = datetime.now(UTC)
    async with db.transaction(pool) as conn:
        if claim is not None:
            # The broadcast and the key's answer commit together: a retry that takes the key over
            # later finds no broadcast of this request's, and this request none of the retry's.
            await claim.hold(conn)
        # Two identical requests at once: the second waits here and finds the first.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1), hashtext($2))", principal.tenant_id,
                           fingerprint)
        existing = await conn.fetchval(
            "SELECT id FROM broadcasts WHERE tenant_id = $1 AND fingerprint = $2 AND created_at > $3"
            " ORDER BY created_at DESC LIMIT 1", principal.tenant_id, fingerprint,
            now - timedelta(seconds=sender_loop.settings.duplicate_window_s))
        if existing is not None:
            response = web.json_response({**await _broadcast_json(conn, principal.tenant_id, existing),
                                          "idempotent": True})
            if claim is not None:
                await claim.keep(conn, response.status, response.text)
            return response
        opted_out = {r["phone"] for r in await conn.fetch(
            "SELECT phone FROM opt_outs WHERE tenant_id = $1 AND phone = ANY($2::text[])", principal.tenant_id,
            phones)}
        to_send = [p for p in phones if p not in opted_out]
        broadcast_id = uuid.uuid4()
        await conn.execute(
            "INSERT INTO broadcasts (id, tenant_id, status, text, total, invalid, opted_out, fingerprint, created_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            broadcast_id, principal.tenant_id, "queued" if to_send else "completed", text, recipients.total,
            len(invalid), len(opted_out), fingerprint, now)
        await handlers.queue_broadcast(conn, sender, broadcast_id, text, to_send, now)
        answer = await _broadcast_json(conn, principal.tenant_id, broadcast_id)
        answer.update({"status": "accepted", "idempotent": False, "invalid_recipients": invalid[:INVALID_SHOWN],
                       "opted_out_count": len(opted_out), "departments": from_departments})
        response = web.json_response(answer, status=202)
        if claim is not None:
            await claim.keep(conn, response.status, response.text)
    log.info("broadcast accepted", extra={"broadcast_id": str(broadcast_id), "queued": len(to_send)})
    return response


@dataclass
class Recipients:
    total: int = 0
    valid: dict[str, int] = field(default_factory=dict)  # E.164 → where it was first named
    invalid: list[dict[str, Any]] = field(default_factory=list)
    departments: list[dict[str, Any]] = field(default_factory=list)  # each department named, and how many it gave


async def _recipients(pool, numbers: Numbers, tenant_id: str, sender: handlers.Sender,
                      named: list[str | DepartmentPatients]) -> Recipients:
    """Phone numbers as given, and departments' patients as the notifier knows them now."""
    out = Recipients()
    phones = [(i, r) for i, r in enumerate(named) if isinstance(r, str)]
    normalised = await numbers.to_e164([r for _, r in phones], sender.default_region)
    for (i, number), (phone, why_not) in zip(phones, normalised, strict=True):
        out.total += 1
        if phone is None:
            out.invalid.append({"index": i, "phone": number, "reason": why_not})
        else:
            out.valid.setdefault(phone, i)
    for i, recipient in enumerate(named):
        if isinstance(recipient, str):
            continue
        async with pool.acquire() as conn:
            patients = await audiences.members(conn, tenant_id, recipient.department, recipient.patients)
        out.departments.append({"index": i, "department": recipient.department,
                                "patients": recipient.patients.value, "count": len(patients)})
        for patient in patients:
            out.total += 1
            phone, why_not = handlers.phone_for(patient, sender.default_region)
            if phone is None:
                out.invalid.append({"index": i, "department": recipient.department, "chat_id": patient.chat_id,
                                    "reason": why_not})
            else:
                out.valid.setdefault(phone, i)
    return out


async def _session_check(sender: Sender, session: str, request: web.Request) -> web.Response | None:
    """Ask the provider whether the session can send. If it does not answer in time, accept: the
    messages are held by the sender until the session can send, which is safer than refusing."""
    try:
        state = await asyncio.wait_for(sender.provider.session_state(session),
                                       timeout=sender.settings.status_check_timeout_s)
    except (TimeoutError, SendFailed) as exc:
        log.warning("session check did not answer; broadcast accepted and held until the session can send",
                    extra={"session": session, "error": str(exc)})
        return None
    if not state.can_send:
        return _not_connected(session, f"the provider reports {state.provider_status}")
    return None


async def _broadcast_json(conn, tenant_id: str, broadcast_id: uuid.UUID, *, limit: int = ITEMS,
                          offset: int = 0) -> dict[str, Any]:
    b = await conn.fetchrow("SELECT id, status, text, total, invalid, opted_out, created_at, finished_at"
                            " FROM broadcasts WHERE tenant_id = $1 AND id = $2", tenant_id, broadcast_id)
    if b is None:
        raise NotFound("no such broadcast")
    by_status = {r["status"]: r["n"] for r in await conn.fetch(
        "SELECT status, count(*) AS n FROM notifications WHERE broadcast_id = $1 GROUP BY status", broadcast_id)}
    items = await conn.fetch(
        "SELECT id, phone, status, reason, attempts, provider_message_id, sent_at, delivered_at, read_at"
        " FROM notifications WHERE broadcast_id = $1 ORDER BY created_at, phone LIMIT $2 OFFSET $3",
        broadcast_id, limit, offset)
    queued = sum(by_status.values())
    return {
        "broadcast_id": str(b["id"]), "status": b["status"], "text": b["text"],
        "total_recipients": b["total"], "queued_count": queued, "invalid_recipients_count": b["invalid"],
        "opted_out_count": b["opted_out"], "counts": by_status,
        "sent_count": sum(by_status.get(s, 0) for s in ("sent", "delivered", "read")),
        "failed_count": by_status.get("failed", 0),
        "created_at": b["created_at"].isoformat(), "finished_at": b["finished_at"] and b["finished_at"].isoformat(),
        "items": [json_row(r) for r in items], "offset": offset,
        "next_offset": offset + limit if offset + limit < queued else None,
    }


class Page(BaseModel):
    model_config = ConfigDict(extra="ignore")
    limit: int = Field(ITEMS, ge=1, le=1000)
    offset: int = Field(0, ge=0)


async def get_broadcast(request: web.Request) -> web.Response:
    principal = await request.app[API_KEYS].authenticate(request, Role.VIEWER)
    broadcast_id = uuid_or_404(request.match_info["id"], "broadcast")
    page = Page.model_validate(dict(request.query))
    async with request.app[POOL].acquire() as conn:
        return web.json_response(await _broadcast_json(conn, principal.tenant_id, broadcast_id, limit=page.limit,
                                                       offset=page.offset))


async def cancel_broadcast(request: web.Request) -> web.Response:
    principal = await request.app[API_KEYS].authenticate(request, Role.STAFF)
    broadcast_id = uuid_or_404(request.match_info["id"], "broadcast")
    async with db.transaction(request.app[POOL]) as conn:
        status = await conn.fetchval("SELECT status FROM broadcasts WHERE tenant_id = $1 AND id = $2 FOR UPDATE",
                                     principal.tenant_id, broadcast_id)
        if status is None:
            raise NotFound("no such broadcast")
        if status in ("accepted", "queued", "running"):
            # What is already with the provider goes on; what is still queued does not.
            await conn.execute("UPDATE notifications SET status = 'cancelled', reason = 'broadcast cancelled'"
                               " WHERE broadcast_id = $1 AND status = 'queued'", broadcast_id)
            await conn.execute("UPDATE broadcasts SET status = 'cancelled', finished_at = $2 WHERE id = $1",
                               broadcast_id, datetime.now(UTC))
            await outbox.add(conn, await sending.cancelled(conn, principal.tenant_id, broadcast_id))
        answer = await _broadcast_json(conn, principal.tenant_id, broadcast_id)
    return web.json_response(answer)


class NotificationQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")
    status: str = Field("failed", pattern="^(queued|sending|unknown|sent|delivered|read|failed|cancelled)$")
    limit: int = Field(100, ge=1, le=1000)


async def list_notifications(request: web.Request) -> web.Response:
    principal = await request.app[API_KEYS].authenticate(request, Role.VIEWER)
    query = NotificationQuery.model_validate(dict(request.query))
    async with request.app[POOL].acquire() as conn:
        rows = await conn.fetch(
            "SELECT id, kind, phone, text, status, reason, maybe_sent, attempts, provider_message_id, broadcast_id,"
            " created_at, sent_at, failed_at FROM notifications WHERE tenant_id = $1 AND status = $2"
            " ORDER BY created_at DESC LIMIT $3", principal.tenant_id, query.status, query.limit)
    return web.json_response({"items": [json_row(r) for r in rows]})


# Never a broadcast message to a number that opted out since (STOP). A send that may have gone out
# (`maybe_sent`) is retried only when asked for by its id: "retry all" would send it twice.
_RETRY = """
UPDATE notifications n SET status = 'queued', attempts = 0, next_attempt_at = $3, failed_at = NULL,
    maybe_sent = false
WHERE tenant_id = $1 AND status = 'failed' AND phone NOT LIKE 'invalid:%'
  AND ($2::uuid IS NULL OR id = $2) AND ($2::uuid IS NOT NULL OR NOT maybe_sent)
  AND NOT (broadcast_id IS NOT NULL AND EXISTS (SELECT FROM opt_outs o WHERE o.tenant_id = n.tenant_id
                                                                        AND o.phone = n.phone))
RETURNING id, broadcast_id
"""


async def retry_notifications(request: web.Request) -> web.Response:
    """Failed notifications back in the queue: one (`/{id}/retry`) or all of the tenant's (`/retry`)."""
    principal = await request.app[API_KEYS].authenticate(request, Role.STAFF)
    one = request.match_info.get("id")
    notification_id = uuid_or_404(one, "notification") if one else None
    now = datetime.now(UTC)
    async with db.transaction(request.app[POOL]) as conn:
        rows = await conn.fetch(_RETRY, principal.tenant_id, notification_id, now)
        if one and not rows:
            if await conn.fetchval(
                    "SELECT EXISTS (SELECT FROM notifications n JOIN opt_outs o USING (tenant_id, phone)"
                    " WHERE n.tenant_id = $1 AND n.id = $2 AND n.status = 'failed' AND n.broadcast_id IS NOT NULL)",
                    principal.tenant_id, notification_id):
                raise Conflict("the number has opted out of broadcasts (STOP): its broadcast is not sent again")
            raise NotFound("no such failed notification")
        for broadcast_id in {r["broadcast_id"] for r in rows if r["broadcast_id"]}:
            await outbox.add(conn, await broadcast_progress(conn, broadcast_id, now))
        await conn.execute(WAKE_SENDER)
    return web.json_response({"retried": len(rows)})


async def notification_metrics(request: web.Request) -> web.Response:
    principal = await request.app[API_KEYS].authenticate(request, Role.VIEWER)
    async with request.app[POOL].acquire() as conn:
        return web.json_response(await counts(conn, principal.tenant_id, datetime.now(UTC)))


async def session_status(request: web.Request) -> web.Response:
    principal = await request.app[API_KEYS].authenticate(request, Role.VIEWER)
    async with request.app[POOL].acquire() as conn:
        sender = await _sender(conn, principal.tenant_id)
        row = await conn.fetchrow("SELECT status, connected, can_send, source, changed_at, checked_at FROM sessions"
                                  " WHERE session = $1", sender.session)
    known = json_row(row) if row else {"status": "unknown", "connected": None, "can_send": None}
    return web.json_response({"session": sender.session, "provider": request.app[SENDER].provider.provider.value,
                              **known})


routes = [
    web.post("/v1/broadcasts", create_broadcast),
    web.get("/v1/broadcasts/{id}", get_broadcast),
    web.post("/v1/broadcasts/{id}/cancel", cancel_broadcast),
    web.get("/v1/notifications", list_notifications),
    web.post("/v1/notifications/retry", retry_notifications),
    web.post("/v1/notifications/{id}/retry", retry_notifications),
    web.get("/v1/notifications/metrics", notification_metrics),
    web.get("/v1/session", session_status),
]
