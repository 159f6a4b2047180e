"""Runs a service from its declaration: connections, topology, relay, consumers, jobs and HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import signal
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
from aio_pika.abc import AbstractRobustConnection
from aiohttp import web

from . import db, outbox, topology
from .auth import ApiKeys
from .consumer import DeadLetterCollector, EventConsumer, QueueWorker
from .errors import DatabaseUnavailable
from .http import error_middleware, health_routes, render_metrics
from .jobs import JobRunner, Periodic, Tick
from .logs import bind_log_context, configure_logging
from .metrics import Metrics
from .migrate import migrate, migration_files, pending
from .outbox import Relay
from .publisher import Publisher
from .settings import CommonSettings

log = logging.getLogger(__name__)


def _connection_is_the_unit_of_work(conn: asyncpg.Connection) -> asyncpg.Connection:
    return conn


@dataclass(frozen=True)
class ServiceSpec:
    """Everything a service is; `run_service` turns it into a running process."""

    name: str
    port: int
    schema: str
    migrations: Path | None = None
    unit_of_work: Callable[[asyncpg.Connection], Any] = _connection_is_the_unit_of_work
    subscriptions: Sequence[topology.Subscription] = ()
    routes: Sequence[web.AbstractRouteDef] = ()
    jobs: Sequence[Periodic] = ()
    # The service's own resources, as aiohttp cleanup contexts: started after the pool, broker and
    # relay, before consumers; stopped after consumers, before the relay's last flush.
    contexts: Sequence[Callable[[web.Application], AsyncIterator[None]]] = ()
    max_body_bytes: int = 1024 * 1024


SETTINGS = web.AppKey("settings", CommonSettings)
SPEC = web.AppKey("spec", ServiceSpec)
METRICS = web.AppKey("metrics", Metrics)
POOL = web.AppKey("pool", asyncpg.Pool)
AMQP = web.AppKey("amqp", AbstractRobustConnection)
PUBLISHER = web.AppKey("publisher", Publisher)
STOPPING = web.AppKey("stopping", asyncio.Event)
JOB_RUNNERS = web.AppKey("job_runners", list)
API_KEYS = web.AppKey("api_keys", ApiKeys)


async def _retrying(what: str, connect: Callable[[], Any], stopping: asyncio.Event) -> Any:
    """Wait for a dependency at start-up rather than crash-looping while it boots."""
    delay = 0.5
    while True:
        try:
            return await connect()
        except (*db.CONNECTION_ERRORS, OSError, TimeoutError, aio_pika.exceptions.AMQPError) as exc:
            if stopping.is_set():
                raise
            log.warning("waiting for %s: %s", what, str(exc) or type(exc).__name__)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)


async def _database(app: web.Application) -> AsyncIterator[None]:
    s, spec = app[SETTINGS], app[SPEC]
    pool = await _retrying("database", lambda: db.create_pool(
        s.database_url, spec.schema, min_size=s.db_pool_min, max_size=s.db_pool_max,
        command_timeout=s.db_command_timeout_s, connect_timeout=s.connect_timeout_s,
    ), app[STOPPING])
    async with pool.acquire() as conn:
        applied = await migrate(conn, spec.schema, migration_files(spec.migrations))
    if applied:
        log.info("migrations applied", extra={"versions": applied})
    app[POOL] = pool
    app[API_KEYS] = ApiKeys(pool)
    yield
    await asyncio.wait_for(pool.close(), timeout=s.shutdown_timeout_s)


async def _broker(app: web.Application) -> AsyncIterator[None]:
    s, spec = app[SETTINGS], app[SPEC]
    connection = await _retrying("broker", lambda: aio_pika.connect_robust(
        s.amqp_url, timeout=s.connect_timeout_s, reconnect_interval=s.reconnect_interval_s,
        client_properties={"connection_name": f"wabus-{spec.name}"},
    ), app[STOPPING])
    channel = await connection.channel()
    await topology.declare(channel, spec.name, spec.subscriptions)
    await channel.close()
    app[AMQP] = connection
    app[PUBLISHER] = await Publisher.open(connection, service=spec.name, timeout_s=s.publish_timeout_s,
                                          metrics=app[METRICS])
    yield
    with contextlib.suppress(Exception):
        await asyncio.wait_for(connection.close(), timeout=5)


async def _outbox_relay(app: web.Application) -> AsyncIterator[None]:
    s, spec = app[SETTINGS], app[SPEC]
    relay = Relay(dsn=s.database_url, schema=spec.schema, publisher=app[PUBLISHER], metrics=app[METRICS],
                  batch_size=s.outbox_batch_size, poll_interval_s=s.outbox_poll_interval_s,
                  connect_timeout_s=s.connect_timeout_s, command_timeout_s=s.db_command_timeout_s)
    relay_stopping = asyncio.Event()
    task = asyncio.create_task(relay.run(relay_stopping), name=f"{spec.name}-outbox-relay")
    app[AMQP].reconnect_callbacks.add(lambda *_: relay.wake())
    yield
    # Consumers have stopped by now; publish what their last transactions wrote.
    relay_stopping.set()
    await task
    if relay.is_active:  # a standby leaves the rows to the active relay, which keeps their order
        try:
            await asyncio.wait_for(relay.drain(), timeout=s.shutdown_timeout_s)
        except Exception as exc:  # noqa: BLE001 - what stays in the outbox is published on the next start
            log.warning("outbox not fully flushed at shutdown", extra={"error": str(exc)})
    await relay.close()


async def _consumers(app: web.Application) -> AsyncIterator[None]:
    s, spec, metrics, stopping = app[SETTINGS], app[SPEC], app[METRICS], app[STOPPING]
    workers, consumers = [], []
    for sub in spec.subscriptions:
        # The deliveries in hand, from all of the subscription's queues, are applied by its consumer's
        # one group worker, in arrival order: that is what keeps each shard's order.
        ordered = bool(sub.shards or sub.single_active)
        consumer = EventConsumer(
            service=spec.name, subscription=sub, pool=app[POOL], publisher=app[PUBLISHER],
            make_uow=spec.unit_of_work, metrics=metrics, unavailable_backoff_s=s.unavailable_backoff_s,
            stopping=stopping, together=sub.prefetch > 1,
        )
        consumer.start()
        consumers.append(consumer)
        for queue in topology.consumed_queues(sub):
            workers.append(QueueWorker(queue, sub.prefetch, functools.partial(consumer.process, queue=queue),
                                       stop_timeout_s=s.shutdown_timeout_s, ordered=ordered))
    collector = DeadLetterCollector(service=spec.name, pool=app[POOL], metrics=metrics,
                                    unavailable_backoff_s=s.unavailable_backoff_s, stopping=stopping)
    workers.append(QueueWorker(topology.dead_queue(spec.name), 8, collector.process,
                               stop_timeout_s=s.shutdown_timeout_s))
    for worker in workers:
        await worker.start(app[AMQP])
    yield
    await asyncio.gather(*(w.stop() for w in workers))
    await asyncio.gather(*(c.stop() for c in consumers))


async def _jobs(app: web.Application) -> AsyncIterator[None]:
    s, spec = app[SETTINGS], app[SPEC]
    prune = Periodic("prune_inbox", s.inbox_prune_every_s, _prune_inbox(s.inbox_retention_h))
    jobs = [(job, spec.unit_of_work) for job in spec.jobs] + [(prune, _connection_is_the_unit_of_work)]
    runners = [
        JobRunner(job, service=spec.name, pool=app[POOL], dsn=s.database_url, schema=spec.schema,
                  make_uow=make_uow, metrics=app[METRICS], poll_interval_s=s.leader_poll_interval_s,
                  connect_timeout_s=s.connect_timeout_s)
        for job, make_uow in jobs
    ]
    app[JOB_RUNNERS] = runners
    jobs_stopping = asyncio.Event()
    tasks = [asyncio.create_task(r.run(jobs_stopping), name=f"{spec.name}-job-{r.job.name}") for r in runners]
    yield
    jobs_stopping.set()
    await asyncio.gather(*tasks, return_exceptions=True)


def _prune_inbox(retention_h: float):
    async def prune_inbox(tick: Tick, conn: asyncpg.Connection) -> list:
        await conn.execute("DELETE FROM inbox WHERE applied_at < $1", tick.at - timedelta(hours=retention_h))
        return []

    return prune_inbox


def build_app(common: CommonSettings, spec: ServiceSpec) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=spec.max_body_bytes)
    app[SETTINGS], app[SPEC], app[METRICS], app[STOPPING] = common, spec, Metrics(spec.name), asyncio.Event()
    app.cleanup_ctx.extend([_database, _broker, _outbox_relay, *spec.contexts, _consumers, _jobs])

    async def stop_work(app: web.Application) -> None:
        app[STOPPING].set()

    app.on_shutdown.append(stop_work)

    async def readiness() -> dict[str, str]:
        return await _readiness(app)

    async def metrics_text() -> bytes:
        await _refresh_gauges(app)
        return render_metrics(app[METRICS].registry)

    app.add_routes(health_routes(readiness, metrics_text))
    app.add_routes(list(spec.routes))
    return app


async def _readiness(app: web.Application) -> dict[str, str]:
    s, spec = app[SETTINGS], app[SPEC]
    checks = {"database": "ok", "migrations": "ok", "broker": "ok"}
    try:
        async with asyncio.timeout(s.readiness_timeout_s), app[POOL].acquire() as conn:
            missing = await pending(conn, spec.schema, migration_files(spec.migrations))
        if missing:
            checks["migrations"] = f"pending: {', '.join(missing)}"
    except (*db.CONNECTION_ERRORS, OSError, TimeoutError, asyncpg.PostgresError) as exc:
        checks["database"] = f"unreachable: {type(exc).__name__}"
        checks["migrations"] = "unknown"
    connection = app[AMQP]
    if connection.is_closed or not connection.connected.is_set():
        checks["broker"] = "unreachable"
    return checks


async def _refresh_gauges(app: web.Application) -> None:
    s, metrics, name = app[SETTINGS], app[METRICS], app[SPEC].name
    try:
        async with asyncio.timeout(s.readiness_timeout_s), app[POOL].acquire() as conn:
            count, oldest = await outbox.backlog(conn)
            failed = await conn.fetchval("SELECT count(*) FROM failed_events WHERE retried_at IS NULL")
    except (*db.CONNECTION_ERRORS, OSError, TimeoutError, asyncpg.PostgresError, DatabaseUnavailable):
        return  # the scrape still answers; readiness reports the database
    metrics.outbox_backlog.labels(name).set(count)
    metrics.outbox_oldest_age.labels(name).set(oldest)
    metrics.failed_stored.labels(name).set(failed)


@contextlib.asynccontextmanager
async def serve(common: CommonSettings, spec: ServiceSpec, *, port: int | None = None) -> AsyncIterator[Running]:
    """Start a service in this event loop; leaving the block shuts it down gracefully."""
    app = build_app(common, spec)
    runner = web.AppRunner(app, handle_signals=False, access_log=None,
                           shutdown_timeout=common.shutdown_timeout_s)
    try:
        await runner.setup()
        site = web.TCPSite(runner, common.host, spec.port if port is None else port)
        await site.start()
        host, bound_port = runner.addresses[0][:2]
        yield Running(app=app, url=f"http://{host}:{bound_port}")
    finally:
        # Also after a failed or cancelled start: whatever did start is closed, in reverse order.
        await runner.cleanup()


@dataclass(frozen=True)
class Running:
    app: web.Application
    url: str


async def run_service(common: CommonSettings, spec: ServiceSpec) -> None:
    """The whole life of a service process: serve until SIGTERM or SIGINT, then stop cleanly."""
    configure_logging(common.log_level)
    bind_log_context(service=spec.name)
    stop = asyncio.Event()
    main = asyncio.current_task()
    started = False

    def on_signal() -> None:
        # Before start-up finishes (say, still waiting for the database) there is nothing to drain.
        if started:
            stop.set()
        elif main is not None:
            main.cancel()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    try:
        async with serve(common, spec) as running:
            started = True
            settle_garbage_collector()
            log.info("service listening", extra={"url": running.url})
            await stop.wait()
            log.info("service stopping")
    except asyncio.CancelledError:
        if started:
            raise
        log.info("service stopped before start-up finished")
        return
    log.info("service stopped")


def settle_garbage_collector() -> None:
    """Objects built at start-up live as long as the process, so later collections need not walk
    them again. The youngest generation is collected less often: reference counting frees most of
    what a request or a delivery allocates, and a collection every 700 objects cost a busy service
    about a tenth of its time (docs/benchmarks.md)."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
