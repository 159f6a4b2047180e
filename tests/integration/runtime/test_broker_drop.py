"""Connections cut by the broker mid-stream: publishing and consuming resume, nothing lost or doubled."""

import asyncio

from shared.events import db, outbox
from shared.events.runtime import ServiceSpec, serve
from tests.support import eventually

from .conftest import consumer_spec, turn

TOTAL = 400


async def test_publishing_and_consuming_resume_after_the_broker_closes_every_connection(isolated, effects):
    settings = isolated.settings(reconnect_interval_s=0.5)
    scheduler = ServiceSpec(name="scheduler", port=0, schema="scheduler")
    sent = [turn(n) for n in range(TOTAL)]
    async with serve(settings, consumer_spec(prefetch=20)), serve(settings, scheduler):
        pool = await db.create_pool(isolated.database_url, "scheduler", min_size=1, max_size=2,
                                    command_timeout=10, connect_timeout=5)

        async def produce():
            for start in range(0, TOTAL, 5):
                async with db.transaction(pool) as conn:
                    await outbox.add(conn, sent[start:start + 5])
                await asyncio.sleep(0.01)

        producing = asyncio.create_task(produce())
        await eventually(lambda: _at_least(effects.count(), TOTAL // 4), what="a quarter applied")
        await isolated.cut_connections()
        await eventually(lambda: _at_least(effects.count(), TOTAL // 2), what="half applied after the first cut")
        await isolated.cut_connections()
        await producing
        await eventually(lambda: _at_least(effects.count(), TOTAL), timeout=60, what="everything applied")
        await pool.close()

    per_event = await effects.per_event()
    assert set(per_event) == {str(e.id) for e in sent}  # nothing lost
    assert set(per_event.values()) == {1}  # nothing doubled
    assert await effects.failed() == []


async def _at_least(count_coro, n: int) -> bool:
    return (await count_coro) >= n
