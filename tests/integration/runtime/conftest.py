from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import aio_pika
import asyncpg
import pytest

from shared.events.catalog import Patient, TurnReached
from shared.events.envelope import Envelope
from shared.events.metrics import Metrics
from shared.events.publisher import Publisher
from shared.events.runtime import ServiceSpec
from shared.events.topology import Subscription


def turn(n: int, tenant: str = "clinic-a") -> Envelope:
    return Envelope.new(TurnReached(department="OPD", department_name="Outpatients", ticket=f"OPD-{n:03d}",
                                    ticket_id=f"t-{n}", patient=Patient(chat_id="212600000000@c.us")),
                        tenant_id=tenant)


async def record_effect(envelope: Envelope, conn: asyncpg.Connection) -> list:
    """The handler most tests use: one row per application, with no unique key to hide doubles."""
    await conn.execute("INSERT INTO effects (event_id, ticket) VALUES ($1, $2)", envelope.id, envelope.data.ticket)
    return []


def consumer_spec(handler=record_effect, *, queue: str = "processor.turns", **subscription) -> ServiceSpec:
    return ServiceSpec(
        name="processor", port=0, schema="processor",
        subscriptions=[Subscription(queue, "wabus.scheduler", ["turn.reached"], handler, **subscription)],
    )


class Effects:
    def __init__(self, url: str):
        self.url = url

    async def _fetch(self, sql: str, *args):
        conn = await asyncpg.connect(self.url, server_settings={"search_path": "processor"})
        try:
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()

    async def count(self) -> int:
        return (await self._fetch("SELECT count(*) FROM effects"))[0][0]

    async def per_event(self) -> dict[str, int]:
        rows = await self._fetch("SELECT event_id::text, count(*) FROM effects GROUP BY 1")
        return {r[0]: r[1] for r in rows}

    async def failed(self) -> list[asyncpg.Record]:
        return await self._fetch("SELECT * FROM failed_events ORDER BY id")


@pytest.fixture
async def effects(isolated) -> Effects:
    conn = await asyncpg.connect(isolated.database_url)
    try:
        await conn.execute(
            "CREATE TABLE processor.effects (event_id uuid NOT NULL, ticket text,"
            " at timestamptz NOT NULL DEFAULT clock_timestamp())"
        )
    finally:
        await conn.close()
    return Effects(isolated.database_url)


@contextlib.asynccontextmanager
async def publisher(url: str) -> AsyncIterator[Publisher]:
    connection = await aio_pika.connect(url, timeout=10)
    try:
        yield await Publisher.open(connection, service="test", timeout_s=5, metrics=Metrics("test"))
    finally:
        await connection.close()
