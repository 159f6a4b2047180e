"""Delivery receipts: a message's status only moves forward, whatever order the acks arrive in."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from shared.events.catalog import AckStatus, NotificationStatusChanged
from shared.events.envelope import Envelope, Event

# Later wins; an ack can never take a message back. A failure after delivery is ignored.
RANK = {"queued": 0, "sending": 1, "unknown": 2, "failed": 3, "sent": 4, "delivered": 5, "read": 6}
_FROM_ACK = {AckStatus.SERVER: "sent", AckStatus.DELIVERED: "delivered", AckStatus.READ: "read",
             AckStatus.PLAYED: "read", AckStatus.FAILED: "failed"}

_ROW = "SELECT id, tenant_id, status, broadcast_id FROM notifications WHERE provider_message_id = $1 FOR UPDATE"

_ADVANCE = """
UPDATE notifications SET status = $2,
    sent_at = COALESCE(sent_at, $3),
    delivered_at = CASE WHEN $2 IN ('delivered', 'read') THEN COALESCE(delivered_at, $3) ELSE delivered_at END,
    read_at = CASE WHEN $2 = 'read' THEN COALESCE(read_at, $3) ELSE read_at END,
    failed_at = CASE WHEN $2 = 'failed' THEN $3 ELSE failed_at END,
    reason = CASE WHEN $2 = 'failed' THEN 'the provider reported the message as failed' ELSE reason END
WHERE id = $1
"""


def status_changed(row: asyncpg.Record | dict, status: str, *, provider_message_id: str | None = None,
                   reason: str | None = None) -> list[NotificationStatusChanged]:
    """A notification's new status as an event. A broadcast's recipients report as their broadcast
    (BroadcastStatusChanged, and GET /v1/broadcasts/{id}): an event each would put tens of thousands
    on the bus, and into every screen's stream, for one broadcast."""
    if row["broadcast_id"] is not None:
        return []
    return [NotificationStatusChanged(notification_id=str(row["id"]), status=status,
                                      provider_message_id=provider_message_id, reason=reason)]


def as_envelopes(row: asyncpg.Record | dict, events: list[Event]) -> list[Envelope]:
    """Events caused by the sender rather than by a consumed event: each starts its own chain."""
    return [Envelope.new(e, tenant_id=row["tenant_id"]) for e in events]


async def apply(conn: asyncpg.Connection, provider_message_id: str, ack: AckStatus, at: datetime) -> list[Event]:
    status = _FROM_ACK.get(ack)
    if status is None:
        return []  # pending: nothing new
    row = await conn.fetchrow(_ROW, provider_message_id)
    if row is None:
        # The send's own answer may not be recorded yet: keep the ack for when it is.
        await conn.execute("INSERT INTO early_acks (provider_message_id, status, at) VALUES ($1, $2, $3)"
                           " ON CONFLICT DO NOTHING", provider_message_id, status, at)
        return []
    return await advance(conn, row, status, at, provider_message_id)


async def advance(conn: asyncpg.Connection, row: asyncpg.Record | dict, status: str, at: datetime,
                  provider_message_id: str) -> list[Event] | None:
    """None when the ack changes nothing."""
    if RANK[status] <= RANK[row["status"]]:  # failed ranks below sent: a late failure never undoes a delivery
        return None
    await conn.execute(_ADVANCE, row["id"], status, at)
    return status_changed(row, status, provider_message_id=provider_message_id)


async def apply_early(conn: asyncpg.Connection, sent: asyncpg.Record, provider_message_id: str) -> list[Envelope]:
    """Acks that came before the send was recorded as sent, applied in order of precedence."""
    acks = await conn.fetch("DELETE FROM early_acks WHERE provider_message_id = $1 RETURNING status, at",
                            provider_message_id)
    events: list[Envelope] = []
    row = {**dict(sent), "status": "sent"}
    for ack in sorted(acks, key=lambda a: RANK[a["status"]]):
        caused = await advance(conn, row, ack["status"], ack["at"], provider_message_id)
        if caused is not None:
            row["status"] = ack["status"]
            events += as_envelopes(row, caused)
    return events
