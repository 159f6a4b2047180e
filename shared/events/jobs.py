"""Periodic jobs that run on one replica at a time.

Leadership is a session-level PostgreSQL advisory lock held on a dedicated connection: if the
leader dies, its connection closes and the lock is free. Each new leader bumps the job's fencing
epoch; a run commits only if the epoch is still its own, so a stale leader (paused, partitioned)
can never write after a newer one took over.

Missed ticks are caught up once: after downtime the job runs a single time, and its Tick says how
many ticks were missed and since when, so the job can cover the whole window itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from . import db, outbox
from .envelope import Envelope
from .errors import DatabaseUnavailable, StaleLeader
from .metrics import Metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tick:
    at: datetime  # the scheduled time of this run, aligned to the job's period
    previous: datetime | None  # the last tick that ran, by any leader
    missed: int  # ticks that passed without a run since `previous`
    epoch: int  # the leader's fencing epoch


JobFunction = Callable[[Tick, Any], Awaitable[Sequence[Envelope]]]


@dataclass(frozen=True)
class Periodic:
    name: str
    every_s: float
    run: JobFunction


_TAKE_LEASE = """
INSERT INTO job_leases (job, epoch, holder, acquired_at) VALUES ($1, 1, $2, now())
ON CONFLICT (job) DO UPDATE SET epoch = job_leases.epoch + 1, holder = EXCLUDED.holder, acquired_at = now()
RETURNING epoch, last_tick
"""

# Takes the lease row's lock for the run's transaction: a new leader's epoch bump waits for it.
_FENCE = "UPDATE job_leases SET last_tick = $3 WHERE job = $1 AND epoch = $2 RETURNING true"


def tick_at(now: datetime, every_s: float) -> datetime:
    return datetime.fromtimestamp(math.floor(now.timestamp() / every_s) * every_s, UTC)


def due_tick(now: datetime, last: datetime | None, every_s: float, epoch: int) -> Tick | None:
    """The tick to run now, if one is due (pure; the leader loop calls it)."""
    current = tick_at(now, every_s)
    if last is not None and last >= current:
        return None
    missed = 0 if last is None else max(0, round((current - last).total_seconds() / every_s) - 1)
    return Tick(at=current, previous=last, missed=missed, epoch=epoch)


class JobRunner:
    def __init__(self, job: Periodic, *, service: str, pool: asyncpg.Pool, dsn: str, schema: str,
                 make_uow: Callable[[asyncpg.Connection], Any], metrics: Metrics, poll_interval_s: float,
                 connect_timeout_s: float, clock: Callable[[], datetime] = lambda: datetime.now(UTC)):
        self.job = job
        self._service = service
        self._pool = pool
        self._dsn = dsn
        self._schema = schema
        self._make_uow = make_uow
        self._metrics = metrics
        self._poll_interval_s = poll_interval_s
        self._connect_timeout_s = connect_timeout_s
        self._clock = clock
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._lock_conn: asyncpg.Connection | None = None
        self._epoch: int | None = None
        self._last: datetime | None = None
        # Followers report 0, so a vanished leader shows as a job nobody leads.
        metrics.job_leader.labels(service, job.name).set(0)

    @property
    def is_leader(self) -> bool:
        return self._epoch is not None

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                if not self.is_leader:
                    await self._try_lead()
                if self.is_leader:
                    await self._run_due()
            except (DatabaseUnavailable, *db.CONNECTION_ERRORS, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
                log.warning("job paused: database unavailable", extra={"job": self.job.name, "error": str(exc)})
                await self._resign()
            except Exception:  # noqa: BLE001 - the runner must outlive any one bad pass
                log.exception("job runner pass failed", extra={"job": self.job.name})
                await self._resign()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=self._sleep_s())
        await self._resign()

    def _sleep_s(self) -> float:
        if not self.is_leader:
            return self._poll_interval_s
        now = self._clock().timestamp()
        next_tick = (math.floor(now / self.job.every_s) + 1) * self.job.every_s
        return max(0.01, next_tick - now)

    async def _try_lead(self) -> None:
        conn = await db.lock_holder(self._dsn, self._schema, self.job.name, timeout=self._connect_timeout_s)
        if conn is None:
            return
        try:
            epoch, last = await conn.fetchrow(_TAKE_LEASE, self.job.name, self.holder)
        except BaseException:
            conn.terminate()
            raise
        self._lock_conn, self._epoch, self._last = conn, epoch, last
        self._metrics.job_leader.labels(self._service, self.job.name).set(1)
        log.info("job leadership taken", extra={"job": self.job.name, "epoch": epoch, "holder": self.holder})

    async def _run_due(self) -> None:
        assert self._lock_conn is not None and self._epoch is not None
        # The lock lives as long as its connection; if that is gone, so is the leadership.
        await asyncio.wait_for(self._lock_conn.fetchval("SELECT 1"), timeout=self._connect_timeout_s)
        tick = due_tick(self._clock(), self._last, self.job.every_s, self._epoch)
        if tick is None:
            return
        try:
            await self.run_tick(tick)
        except StaleLeader:
            self._metrics.job_runs.labels(self._service, self.job.name, "stale_leader").inc()
            log.warning("job leadership lost to a newer epoch", extra={"job": self.job.name, "epoch": tick.epoch})
            await self._resign()
            return
        except (DatabaseUnavailable, *db.CONNECTION_ERRORS):
            raise
        except Exception:  # noqa: BLE001 - a failing run is retried on the next tick
            self._metrics.job_runs.labels(self._service, self.job.name, "error").inc()
            log.exception("job run failed", extra={"job": self.job.name, "tick": tick.at.isoformat()})
            return
        self._last = tick.at
        self._metrics.job_runs.labels(self._service, self.job.name, "ok").inc()
        if tick.missed:
            log.info("job caught up", extra={"job": self.job.name, "missed": tick.missed})

    async def run_tick(self, tick: Tick) -> None:
        """Run one tick in one transaction, fenced by the epoch; its events go to the outbox."""
        async with db.transaction(self._pool) as conn:
            if not await conn.fetchval(_FENCE, self.job.name, tick.epoch, tick.at):
                raise StaleLeader(self.job.name)
            caused = await self.job.run(tick, self._make_uow(conn))
            await outbox.add(conn, caused or ())

    async def _resign(self) -> None:
        conn, self._lock_conn, self._epoch = self._lock_conn, None, None
        self._metrics.job_leader.labels(self._service, self.job.name).set(0)
        if conn is not None:
            await db.let_go(conn)

    def terminate(self) -> None:
        """Drop the lock connection at once, as a crash would."""
        if self._lock_conn is not None:
            self._lock_conn.terminate()
