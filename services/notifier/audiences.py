"""Departments' waiting and subscribed patients, followed from the scheduler's events, for broadcasts.

A patient's own events (issued, called, ended, subscribed) arrive in order on their chat's shard;
an opening arrives on another, so subscriptions are compared with the last opening's time.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

import asyncpg

from shared.events.catalog import OpeningSubscribed, Patient, QueueOpened, TicketEnded, TicketIssued, TurnReached
from shared.events.envelope import Event


class Audience(StrEnum):
    WAITING = "waiting"
    SUBSCRIBED = "subscribed"
    ALL = "all"


_ADD = """
INSERT INTO audience (tenant_id, department, list, chat_id, ticket_id, phone, name, language, since)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (tenant_id, department, list, chat_id) DO UPDATE SET ticket_id = EXCLUDED.ticket_id,
    phone = EXCLUDED.phone, name = EXCLUDED.name, language = EXCLUDED.language, since = EXCLUDED.since
"""


async def _add(conn: asyncpg.Connection, tenant_id: str, department: str, audience: Audience, patient: Patient,
               at: datetime, ticket_id: str | None = None) -> None:
    await conn.execute(_ADD, tenant_id, department, audience.value, patient.chat_id, ticket_id, patient.phone,
                       patient.name, patient.language, at)


async def follow(conn: asyncpg.Connection, tenant_id: str, event: Event, at: datetime) -> None:
    """Apply one scheduler event to the audiences, in the transaction that consumes it."""
    match event:
        case TicketIssued():
            await _add(conn, tenant_id, event.department, Audience.WAITING, event.patient, at, event.ticket_id)
        case TurnReached() | TicketEnded():
            await conn.execute("DELETE FROM audience WHERE tenant_id = $1 AND ticket_id = $2", tenant_id,
                               event.ticket_id)
        case OpeningSubscribed(is_open=False):
            if await _last_opening(conn, tenant_id, event.department) < at:
                await _add(conn, tenant_id, event.department, Audience.SUBSCRIBED, event.patient, at)
        case QueueOpened():
            await _last_opening(conn, tenant_id, event.department, event.opened_at)
            # The subscribers it names were told; so was anyone who subscribed before it opened.
            await conn.execute("DELETE FROM audience WHERE tenant_id = $1 AND department = $2"
                               " AND list = 'subscribed' AND (since <= $3 OR chat_id = ANY($4::text[]))",
                               tenant_id, event.department, event.opened_at,
                               [p.chat_id for p in event.subscribers])


NEVER = datetime(1970, 1, 1, tzinfo=UTC)

_LAST_OPENING = """
INSERT INTO department_openings (tenant_id, department, opened_at) VALUES ($1, $2, $3)
ON CONFLICT (tenant_id, department)
    DO UPDATE SET opened_at = greatest(department_openings.opened_at, EXCLUDED.opened_at)
RETURNING opened_at
"""


async def _last_opening(conn: asyncpg.Connection, tenant_id: str, department: str,
                        opened_at: datetime = NEVER) -> datetime:
    """The department's last opening, moved on to `opened_at` if later. The row stays locked until
    commit, so an opening and a subscription of one department never pass each other unseen."""
    return await conn.fetchval(_LAST_OPENING, tenant_id, department, opened_at)


async def members(conn: asyncpg.Connection, tenant_id: str, department: str, audience: Audience) -> list[Patient]:
    lists = ["waiting", "subscribed"] if audience is Audience.ALL else [audience.value]
    rows = await conn.fetch(
        "SELECT DISTINCT ON (chat_id) chat_id, phone, name, language FROM audience"
        " WHERE tenant_id = $1 AND department = $2 AND list = ANY($3::text[]) ORDER BY chat_id, since",
        tenant_id, department, lists)
    return [Patient(**dict(r)) for r in rows]
