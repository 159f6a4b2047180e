"""The Flask + Celery baseline under the same load: gunicorn and a Celery worker as subprocesses.

Its end-to-end time is "until the row exists": the worker's INSERT stamps `created_at` with
clock_timestamp(), which is compared with the wall-clock time the POST was sent. A poller also
counts the phase's rows every half second, as a check on the same curve.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import sys
import time
from pathlib import Path

import asyncpg

from . import cpu, infra, load, phases
from .baseline.tasks import CREATE_TABLE

ROOT = Path(__file__).resolve().parent.parent
TENANT = "bench"
SETTLE_S = 90.0


def _range(prefix: str) -> tuple[str, str]:
    # ids are compared with COLLATE "C": every id starting with prefix lies in [prefix, prefix + "~")
    return prefix, prefix + "~"


async def _count(conn: asyncpg.Connection, prefix: str) -> int:
    low, high = _range(prefix)
    return await conn.fetchval("SELECT count(*) FROM messages WHERE id >= $1 AND id < $2", low, high)


async def _wait_for_rows(conn: asyncpg.Connection, prefix: str, target: int, timeout_s: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if await _count(conn, prefix) >= target:
            break
        await asyncio.sleep(0.25)
    return time.monotonic() - started


async def _drain(conn: asyncpg.Connection, prefix: str, accepted: list[str], timeout_s: float) -> float:
    """Until every accepted message has its row, or timeout; returns the time waited.

    The row count is cheap but not enough (a request that timed out here may still have been
    enqueued), so once it is high enough the accepted ids themselves are checked.
    """
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if await _count(conn, prefix) >= len(accepted):
            found = await conn.fetchval("SELECT count(*) FROM messages WHERE id = ANY($1::text[])", accepted)
            if found >= len(accepted):
                break
        await asyncio.sleep(0.5)
    return time.monotonic() - started


async def _poll_rows(conn: asyncpg.Connection, prefix: str, into: list[tuple[float, int]]) -> None:
    while True:  # cancelled by the caller when the drain ends
        into.append((time.perf_counter(), await _count(conn, prefix)))
        await asyncio.sleep(0.5)


def _tree(process: infra.Process):
    return lambda: [process.pid, *infra.children_of(process.pid)]


async def run(settings: phases.Settings, tag: str, results_dir: Path, port: int, *, web_workers: int,
              worker_concurrency: int) -> dict:
    vhost, database = infra.run_names(tag, "base")
    if not infra.port_is_free(port):
        raise RuntimeError(f"port {port} already in use (pass --baseline-port to use another)")
    run_prefix = f"CB{tag.replace('-', '')}"
    secret = secrets.token_hex(32)
    env = {**os.environ, "BENCH_BROKER_URL": infra.amqp_url(vhost), "BENCH_DATABASE_URL": infra.database_url(database),
           "BENCH_WEBHOOK_SECRET": secret, "BENCH_TENANT": TENANT}
    url = f"http://127.0.0.1:{port}/webhooks/waha/{TENANT}"
    web_log, worker_log = results_dir / f"{tag}-baseline-web.log", results_dir / f"{tag}-baseline-worker.log"
    report: dict = {"vhost": vhost, "database": database, "url": url,
                    "gunicorn_sync_workers": web_workers, "celery_prefork_concurrency": worker_concurrency,
                    "logs": [str(web_log.relative_to(ROOT)), str(worker_log.relative_to(ROOT))]}

    web: infra.Process | None = None
    worker: infra.Process | None = None
    conn: asyncpg.Connection | None = None
    poll_conn: asyncpg.Connection | None = None
    poller: asyncio.Task | None = None
    try:
        infra.add_vhost(vhost)  # inside the try: a half-made vhost is deleted too
        await infra.create_database(database)
        conn = await asyncpg.connect(infra.database_url(database), timeout=10)
        await conn.execute(CREATE_TABLE)

        print(f"baseline: starting gunicorn ({web_workers} sync workers) and celery "
              f"(prefork, concurrency {worker_concurrency})", flush=True)
        worker = infra.Process("celery", [
            sys.executable, "-m", "celery", "-A", "bench.baseline.tasks", "worker", "--pool", "prefork",
            "--concurrency", str(worker_concurrency), "--loglevel", "WARNING",
        ], env, worker_log, ROOT)
        web = infra.Process("gunicorn", [
            sys.executable, "-m", "gunicorn", "--workers", str(web_workers), "--worker-class", "sync",
            "--bind", f"127.0.0.1:{port}", "--log-level", "warning", "bench.baseline.webapp:app",
        ], env, web_log, ROOT)
        async with load.new_session(limit=8) as http:
            await infra.wait_until(lambda: infra.http_ok(http, f"http://127.0.0.1:{port}/healthz"),
                                   timeout_s=60, what="gunicorn /healthz", alive=web.alive)

        print(f"baseline: warming up with {settings.warmup} webhooks", flush=True)
        warm = load.build_batch(run_prefix + "W", settings.warmup, secret)
        async with load.Sender(url, limit=1) as sender:
            warm_record = await load.trickle(sender, warm)
        if sum(warm_record.accepted) != settings.warmup:
            raise RuntimeError(f"warm-up not accepted: {dict(warm_record.errors)}")
        await _wait_for_rows(conn, warm.prefix, settings.warmup, 60)
        if not worker.alive():
            raise RuntimeError("celery worker exited (see its log)")

        print("baseline: building signed bodies", flush=True)
        fixed_batch = load.build_batch(run_prefix + "F", settings.fixed_count, secret)
        max_batch = load.build_batch(run_prefix + "M", settings.max_count, secret)
        groups: cpu.Groups = {
            "load generator": lambda: [os.getpid()],
            "gunicorn (flask)": _tree(web),
            "celery worker": _tree(worker),
            "postgres": cpu.pids_named("postgres"),
            "rabbitmq": cpu.pids_named("beam.smp"),
        }

        print(f"baseline: fixed rate, {settings.rate:g}/s for {settings.duration_s:g} s", flush=True)
        polled: list[tuple[float, int]] = []
        # its own connection: an asyncpg connection runs one query at a time
        poll_conn = await asyncpg.connect(infra.database_url(database), timeout=10)
        poller = asyncio.create_task(_poll_rows(poll_conn, fixed_batch.prefix, polled))
        fixed = await phases.fixed_rate(url, fixed_batch, settings, groups)
        acks = phases.ack_report(fixed, window_s=settings.duration_s)
        print(f"baseline: draining (up to {settings.drain_s:g} s)", flush=True)
        drain_cpu_before = cpu.snapshot(groups)
        waited = await _drain(conn, fixed_batch.prefix, phases.accepted_ids(fixed, fixed_batch), settings.drain_s)
        # a drain of under a second is too short a sample to say anything
        drain_cpu = cpu.usage(drain_cpu_before, cpu.snapshot(groups)) if waited >= 1 else None
        poller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await poller
        poller = None
        await poll_conn.close()
        poll_conn = None

        low, high = _range(fixed_batch.prefix)
        rows = await conn.fetch("SELECT id, extract(epoch FROM created_at)::float8 AS at FROM messages "
                                "WHERE id >= $1 AND id < $2", low, high)
        arrived = {}
        for row in rows:
            index = phases.index_of(fixed_batch, row["id"])
            if index is not None:
                arrived[index] = row["at"] - fixed.wall_offset  # wall clock -> perf_counter
        report["fixed"] = {**acks, **phases.e2e_report(fixed, fixed_batch, arrived, window_s=settings.duration_s,
                                                       drain_waited_s=waited),
                           "drain_cpu_pct_of_one_core": drain_cpu,
                           "polled_rows": [{"t_s": round(t - fixed.start, 2), "rows": n} for t, n in polled]}
        del fixed_batch, fixed, arrived

        # both systems start the max-rate phase idle: no backlog left from the fixed-rate phase
        print(f"baseline: settling (up to {SETTLE_S:g} s)", flush=True)
        settled = await cpu.settle(SETTLE_S)
        print(f"baseline: max rate, {settings.concurrency} senders for {settings.max_duration_s:g} s", flush=True)
        maximum = await phases.max_rate(url, max_batch, settings, groups)
        report["max"] = {**phases.ack_report(maximum), "settled_before": settled,
                         "batch_exhausted": maximum.record.used >= len(max_batch)}
        report["max"]["rows_when_sending_ended"] = await _count(conn, max_batch.prefix)
    finally:
        # every step on its own: one failing must not leave the others undone
        if poller is not None:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await poller
        for connection in (conn, poll_conn):
            if connection is not None:
                with contextlib.suppress(Exception):
                    await connection.close()
        print("baseline: stopping gunicorn and celery (SIGTERM)", flush=True)
        if web is not None:
            with contextlib.suppress(Exception):
                report["web_exit_code"] = await asyncio.to_thread(web.stop, signal.SIGTERM, 30)
        if worker is not None:
            with contextlib.suppress(Exception):
                report["worker_exit_code"] = await asyncio.to_thread(worker.stop, signal.SIGTERM, 60)
        with contextlib.suppress(Exception):
            await infra.drop_database(database)
        infra.delete_vhost(vhost)
    return report
