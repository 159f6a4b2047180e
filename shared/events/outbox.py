"""The transactional outbox: events are rows until the broker confirms them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterable, Sequence
from typing import Any
from uuid import UUID

import asyncpg

from . import db
from .catalog import route_of
from .envelope import Envelope
from .errors import DatabaseUnavailable, PublishFailed
from .metrics import Metrics
from .publisher import Outgoing, Publisher, build_message

log = logging.getLogger(__name__)

_INSERT = """
INSERT INTO outbox (event_id, event_type, correlation_id, occurred_at, exchange, routing_key, body, headers)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::text[], $6::text[],
                     $7::text[], $8::jsonb[])
"""

_COLUMNS = "seq, event_id, event_type, correlation_id, occurred_at, exchange, routing_key, body, headers"

# The relay alone claims (it holds the lock), so a plain read is enough: no row lock, no transaction.
_CLAIM = f"SELECT {_COLUMNS} FROM outbox ORDER BY seq LIMIT $1"

# A batch is settled and the next one claimed in one round trip. All parts see the outbox as the
# statement began, so the claim leaves out the rows being deleted. An event no queue is bound for is
# parked where `wabus failed` shows it, in the same statement as its delete, not retried forever.
_SETTLE_AND_CLAIM = f"""
WITH parked AS (
    INSERT INTO failed_events (subscription, event_id, event_type, tenant_id, body, headers, reason, attempts,
                               requeue_exchange, requeue_routing_key)
    SELECT 'outbox', o.event_id::text, o.event_type, o.body::jsonb ->> 'tenant_id', convert_to(o.body, 'UTF8'),
           o.headers, p.reason, 1, o.exchange, o.routing_key
    FROM unnest($2::bigint[], $3::text[]) AS p(seq, reason) JOIN outbox o USING (seq)
), settled AS (
    DELETE FROM outbox WHERE seq = ANY($1::bigint[])
)
SELECT {_COLUMNS} FROM outbox WHERE seq <> ALL($1::bigint[]) ORDER BY seq LIMIT $4
"""

_BACKLOG = "SELECT count(*), extract(epoch FROM clock_timestamp() - min(created_at)) FROM outbox"


async def add(conn: asyncpg.Connection, envelopes: Iterable[Envelope]) -> None:
    """Write events in the caller's transaction: they are published only if it commits."""
    rows = list(envelopes)
    if rows:
        await conn.execute(_INSERT, *_columns(rows))


async def add_admitted(conn: asyncpg.Connection, envelopes: Sequence[Envelope], admit: str,
                       *admit_args: Any) -> set[UUID]:
    """Write the events that `admit` lets through, in one statement with it, and return their ids.

    `admit` is a data-modifying query returning `event_id` (a dedupe insert, say). It reads the events'
    ids, in order, as $1 and takes its own arguments from $9 on. The events are kept exactly when what
    `admit` wrote is: outside a transaction the statement commits on its own, with no round trips for one.
    """
    if not envelopes:
        return set()
    rows = await conn.fetch(_INSERT_ADMITTED.format(admit=admit), *_columns(envelopes), *admit_args)
    return {r["event_id"] for r in rows}


_INSERT_ADMITTED = """
WITH admitted AS ({admit})
INSERT INTO outbox (event_id, event_type, correlation_id, occurred_at, exchange, routing_key, body, headers)
SELECT e.event_id, e.event_type, e.correlation_id, e.occurred_at, e.exchange, e.routing_key, e.body, e.headers
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::text[], $6::text[], $7::text[], $8::jsonb[])
     WITH ORDINALITY AS e(event_id, event_type, correlation_id, occurred_at, exchange, routing_key, body, headers, n)
WHERE e.event_id IN (SELECT event_id FROM admitted)
ORDER BY e.n
RETURNING event_id
"""


def _columns(rows: Sequence[Envelope]) -> list[list[Any]]:
    routes = [route_of(e.type, e.version) for e in rows]
    return [
        [e.id for e in rows], [e.type for e in rows], [e.correlation_id for e in rows],
        [e.occurred_at for e in rows], [r.exchange for r in routes], [r.routing_key for r in routes],
        [e.model_dump_json() for e in rows], [json.dumps(e.headers()) for e in rows],
    ]


async def backlog(conn: asyncpg.Connection) -> tuple[int, float]:
    count, oldest = await conn.fetchrow(_BACKLOG)
    return count, float(oldest or 0.0)


def _outgoing(row: asyncpg.Record) -> tuple[str, str, Outgoing]:
    message = build_message(
        body=row["body"].encode(), event_id=str(row["event_id"]), event_type=row["event_type"],
        correlation_id=row["correlation_id"], occurred_at=row["occurred_at"], headers=json.loads(row["headers"]),
    )
    return row["exchange"], row["routing_key"], message


class Relay:
    """Publishes a service's outbox rows, deleting each only after its own confirm.

    It works on a connection of its own, the one that holds the relay's lock and listens for NOTIFY:
    only the lock holder publishes, and only while it holds the lock.
    """

    def __init__(self, *, dsn: str, schema: str, publisher: Publisher, metrics: Metrics, batch_size: int,
                 poll_interval_s: float, connect_timeout_s: float, command_timeout_s: float):
        self._dsn = dsn
        self._schema = schema
        self._publisher = publisher
        self._metrics = metrics
        self._batch_size = batch_size
        self._poll_interval_s = poll_interval_s
        self._connect_timeout_s = connect_timeout_s
        self._command_timeout_s = command_timeout_s
        self._wake = asyncio.Event()
        self._conn: asyncpg.Connection | None = None
        self._holds_lock = False

    async def drain(self) -> int:
        """Publish until the outbox is empty or the broker fails; returns rows published (none while
        another relay of the service holds the lock, or the database is out of reach)."""
        await self._ensure_connected()
        conn = self._conn
        if conn is None or not self.is_active:
            return 0
        total = 0
        async with db.outages(conn):
            rows = await conn.fetch(_CLAIM, self._batch_size)
            while rows:
                failures = await self._publisher.send_many([_outgoing(r) for r in rows])
                # Delete only the rows whose own confirm arrived, and the unroutable ones, parked.
                settled = [r["seq"] for r, failure in zip(rows, failures, strict=True) if failure is None]
                parked = [(r, f) for r, f in zip(rows, failures, strict=True)
                          if f is not None and f.reason == "unroutable"]
                settled += [r["seq"] for r, _ in parked]
                unconfirmed = len(rows) - len(settled)
                rows = await conn.fetch(_SETTLE_AND_CLAIM, settled, [r["seq"] for r, _ in parked],
                                        [str(f) for _, f in parked], 0 if unconfirmed else self._batch_size)
                total += len(settled)
                for row, failure in parked:
                    self._metrics.dead_letters.labels(self._metrics.service, "outbox", "unroutable").inc()
                    log.error("unroutable event parked", extra={"event_id": str(row["event_id"]),
                                                                "event": row["event_type"], "error": str(failure)})
                if unconfirmed:
                    raise PublishFailed(f"{unconfirmed} of {len(settled) + unconfirmed} outbox rows not confirmed")
        return total

    def wake(self) -> None:
        """Drain now (the broker is back, say) instead of at the next poll."""
        self._wake.set()

    @property
    def is_active(self) -> bool:
        return self._conn is not None and not self._conn.is_closed() and self._holds_lock

    async def run(self, stopping: asyncio.Event) -> None:
        """Drain on every NOTIFY, and on a poll in case a notification was missed."""
        failures = 0
        while not stopping.is_set():
            try:
                await self.drain()
                failures = 0
            except (PublishFailed, DatabaseUnavailable) as exc:
                failures += 1
                log.warning("outbox relay paused", extra={"error": str(exc), "failures": failures})
            except Exception:  # noqa: BLE001 - the relay must outlive any one bad pass
                failures += 1
                log.exception("outbox relay pass failed", extra={"failures": failures})
            delay = self._poll_interval_s if failures == 0 else min(5.0, 0.25 * 2 ** min(failures, 5))
            waker = asyncio.ensure_future(self._wake.wait())
            stopper = asyncio.ensure_future(stopping.wait())
            await asyncio.wait({waker, stopper}, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
            waker.cancel()
            stopper.cancel()
            self._wake.clear()

    async def _ensure_connected(self) -> None:
        try:
            if self._conn is None or self._conn.is_closed():
                self._holds_lock = False
                self._conn = await db.connect(self._dsn, self._schema, timeout=self._connect_timeout_s,
                                              command_timeout=self._command_timeout_s, plan_each_time=True)
                await self._conn.add_listener(f"{self._schema}.outbox", lambda *_: self._wake.set())
            if not self._holds_lock:
                # One relay per service publishes, so events leave in the order they were written;
                # the others stand by until its connection, and so its lock, is gone.
                self._holds_lock = bool(await self._conn.fetchval(db.TRY_LOCK, "outbox-relay"))
                if self._holds_lock:
                    log.info("outbox relay active")
        except (*db.CONNECTION_ERRORS, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            await self.close()  # polling carries on until the database is back
            log.warning("outbox relay connection unavailable", extra={"error": str(exc)})

    async def close(self) -> None:
        self._holds_lock = False
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._conn.close(), timeout=5)
            self._conn = None
