"""Periodic jobs: one run per tick across replicas, a new leader when the old one dies, no stale writes."""

import asyncio
from datetime import UTC, datetime

import asyncpg
import pytest

from shared.events import db
from shared.events.errors import StaleLeader
from shared.events.jobs import JobRunner, Periodic, Tick
from shared.events.metrics import Metrics
from tests.support import eventually

EVERY_S = 0.4


async def record_tick(tick: Tick, conn: asyncpg.Connection) -> list:
    # No unique key: a tick run twice would show as two rows.
    await conn.execute("INSERT INTO ticks (at, epoch, missed) VALUES ($1, $2, $3)", tick.at, tick.epoch, tick.missed)
    return []


@pytest.fixture
async def replicas(isolated):
    conn = await asyncpg.connect(isolated.database_url)
    await conn.execute("CREATE TABLE scheduler.ticks (at timestamptz NOT NULL, epoch bigint, missed int)")
    await conn.close()
    pool = await db.create_pool(isolated.database_url, "scheduler", min_size=1, max_size=4, command_timeout=10,
                                connect_timeout=5)

    def replica() -> JobRunner:
        return JobRunner(Periodic("record_tick", EVERY_S, record_tick), service="scheduler", pool=pool,
                         dsn=isolated.database_url, schema="scheduler", make_uow=lambda c: c,
                         metrics=Metrics("scheduler"), poll_interval_s=0.1, connect_timeout_s=5)

    yield replica, pool
    await pool.close()


async def _ticks(pool) -> list[asyncpg.Record]:
    async with pool.acquire() as conn:
        return await conn.fetch("SELECT at, epoch, missed FROM ticks ORDER BY at")


async def test_two_replicas_run_each_tick_once_and_the_other_takes_over_when_the_leader_dies(replicas):
    replica, pool = replicas
    a, b = replica(), replica()
    stop_a, stop_b = asyncio.Event(), asyncio.Event()
    task_a = asyncio.create_task(a.run(stop_a))
    task_b = asyncio.create_task(b.run(stop_b))
    await eventually(lambda: _count_at_least(pool, 5), what="five ticks")
    assert a.is_leader != b.is_leader
    leader, follower, leader_task = (a, b, task_a) if a.is_leader else (b, a, task_b)

    # The leader dies: its connection drops without a goodbye, as on kill -9.
    leader_task.cancel()
    leader.terminate()
    before = len(await _ticks(pool))
    await eventually(lambda: _count_at_least(pool, before + 4), what="ticks under the new leader")
    assert follower.is_leader

    stop_a.set(), stop_b.set()
    await asyncio.gather(task_a, task_b, return_exceptions=True)
    ticks = await _ticks(pool)
    times = [t["at"] for t in ticks]
    assert len(times) == len(set(times)), "a tick ran twice"
    epochs = sorted({t["epoch"] for t in ticks})
    assert len(epochs) == 2 and epochs[0] < epochs[1]


async def test_a_stale_leader_cannot_write_after_a_newer_one_took_over(replicas):
    replica, pool = replicas
    old = replica()
    stop = asyncio.Event()
    task = asyncio.create_task(old.run(stop))
    await eventually(lambda: _count_at_least(pool, 1), what="first tick")
    stale_epoch = old._epoch
    # A newer leader took the lease while the old one was paused (say, partitioned from the database).
    async with pool.acquire() as conn:
        await conn.execute("UPDATE job_leases SET epoch = epoch + 1 WHERE job = 'record_tick'")
    stop.set()
    await task
    before = len(await _ticks(pool))
    with pytest.raises(StaleLeader):
        await old.run_tick(Tick(at=datetime.now(UTC), previous=None, missed=0, epoch=stale_epoch))
    assert len(await _ticks(pool)) == before


async def test_missed_ticks_are_caught_up_once(replicas):
    replica, pool = replicas
    first = replica()
    stop = asyncio.Event()
    task = asyncio.create_task(first.run(stop))
    await eventually(lambda: _count_at_least(pool, 1), what="first tick")
    stop.set()
    await task
    await asyncio.sleep(EVERY_S * 4)  # downtime: no replica runs

    second = replica()
    stop = asyncio.Event()
    task = asyncio.create_task(second.run(stop))
    count = len(await _ticks(pool))
    await eventually(lambda: _count_at_least(pool, count + 1), what="catch-up run")
    stop.set()
    await task
    catch_up = (await _ticks(pool))[count]
    assert catch_up["missed"] >= 2


async def _count_at_least(pool, n: int) -> bool:
    return len(await _ticks(pool)) >= n
