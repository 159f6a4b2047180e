"""The dead-letter store's operations: list, show, replay and purge failed events."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from .consumer import ATTEMPT_HEADER, HISTORY_HEADER
from .errors import PublishFailed
from .publisher import Publisher, build_message

# Broker bookkeeping that must not follow a replayed event back into its queue.
_DROPPED_HEADERS = {ATTEMPT_HEADER, HISTORY_HEADER, "x-death", "x-first-death-queue", "x-first-death-reason",
                    "x-first-death-exchange", "x-last-death-queue", "x-last-death-reason",
                    "x-last-death-exchange", "x-delivery-count"}


@dataclass(frozen=True)
class FailedEvent:
    id: int
    subscription: str
    requeue_exchange: str
    requeue_routing_key: str
    event_id: str | None
    event_type: str | None
    tenant_id: str | None
    reason: str
    attempts: int
    failed_at: datetime
    retried_at: datetime | None
    body: bytes
    headers: dict[str, Any]
    history: list[dict[str, Any]]


_COLUMNS = ("id, subscription, requeue_exchange, requeue_routing_key, event_id, event_type, tenant_id, reason, attempts, failed_at, retried_at,"
            " body, headers, history")


def _failed(row: asyncpg.Record) -> FailedEvent:
    return FailedEvent(**{**dict(row), "headers": json.loads(row["headers"]), "history": json.loads(row["history"])})


async def list_failed(conn: asyncpg.Connection, *, include_retried: bool = False, limit: int = 1000) -> list[FailedEvent]:
    where = "" if include_retried else "WHERE retried_at IS NULL"
    rows = await conn.fetch(f"SELECT {_COLUMNS} FROM failed_events {where} ORDER BY id LIMIT $1", limit)
    return [_failed(r) for r in rows]


async def get_failed(conn: asyncpg.Connection, failed_id: int) -> FailedEvent | None:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM failed_events WHERE id = $1", failed_id)
    return _failed(row) if row else None


async def retry_failed(conn: asyncpg.Connection, publisher: Publisher, failed: FailedEvent) -> None:
    """Send the event back where it failed, as a first attempt, then mark it retried.

    A crash between the two replays it again; the consumer's inbox absorbs the second copy.
    """
    headers = {k: v for k, v in failed.headers.items() if k not in _DROPPED_HEADERS}
    headers["x-wabus-replayed-from"] = failed.id
    correlation_id = None
    try:
        correlation_id = json.loads(failed.body).get("correlation_id")
    except (ValueError, AttributeError):
        pass
    message = build_message(body=failed.body, event_id=failed.event_id or "", event_type=failed.event_type or "",
                            correlation_id=correlation_id, occurred_at=None, headers=headers)
    try:
        await publisher.send(failed.requeue_exchange, failed.requeue_routing_key, message)
    except PublishFailed as exc:
        raise PublishFailed(f"cannot replay into {failed.subscription}: {exc}", reason=exc.reason) from exc
    await conn.execute("UPDATE failed_events SET retried_at = now() WHERE id = $1", failed.id)


async def purge(conn: asyncpg.Connection, *, retried_only: bool = False) -> int:
    where = "WHERE retried_at IS NOT NULL" if retried_only else ""
    return int((await conn.execute(f"DELETE FROM failed_events {where}")).split()[-1])
