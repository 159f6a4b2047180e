"""wabus under load: `wabus up` on bench ports, its own database and vhost, removed afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import sys
import time
from pathlib import Path

import aiohttp

from . import cpu, infra, load, phases
from .listener import Listener

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("gateway", "processor", "scheduler", "notifier")
TENANT = "bench"
SETTLE_S = 90.0


def _wabus_command() -> list[str]:
    script = Path(sys.executable).with_name("wabus")
    return [str(script)] if script.exists() else [sys.executable, "-m", "services.cli"]


def _service_pids(up: infra.Process, name: str):
    def find() -> list[int]:
        return [pid for pid in infra.children_of(up.pid) if infra.cmdline(pid)[-2:] == ["run", name]]
    return find


async def _add_tenant(env: dict[str, str], secret: str) -> dict:
    proc = await asyncio.create_subprocess_exec(
        *_wabus_command(), "tenants", "add", TENANT, "--provider", "waha", "--session", "default",
        "--region", "MA", "--secret", secret, env=env, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"wabus tenants add failed: {err.decode().strip()}")
    return json.loads(out)


# Series worth keeping from each service's /metrics after a phase (histograms: only _sum and _count).
METRICS_KEPT = ("wabus_webhooks_total", "wabus_webhook_duration_seconds_sum", "wabus_webhook_duration_seconds_count",
                "wabus_handler_duration_seconds_sum", "wabus_handler_duration_seconds_count",
                "wabus_events_consumed_total", "wabus_events_published_total", "wabus_outbox_backlog",
                "wabus_outbox_oldest_age_seconds", "wabus_publish_failures_total", "wabus_event_retries_total",
                "wabus_dead_letters_total", "wabus_group_events_sum", "wabus_group_events_count")


async def _scrape(ports: dict[str, int]) -> dict[str, list[str]]:
    """The services' own counters: where the time went, as each service saw it."""
    kept: dict[str, list[str]] = {}
    async with load.new_session(limit=4) as http:
        for name in ("gateway", "processor"):
            try:
                async with http.get(f"http://127.0.0.1:{ports[name]}/metrics",
                                    timeout=aiohttp.ClientTimeout(total=5)) as response:
                    text = await response.text()
            except (aiohttp.ClientError, TimeoutError) as exc:
                kept[name] = [f"unavailable: {exc!r}"]
                continue
            kept[name] = [line for line in text.splitlines() if line.startswith(METRICS_KEPT)]
    return kept


async def _wait_for(listener: Listener, phase: str, target: int, timeout_s: float) -> float:
    """Until `target` messages of `phase` were processed, or timeout; returns the time waited."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if await listener.count(phase) >= target:
            break
        await asyncio.sleep(0.25)
    return time.monotonic() - started


async def _drain(listener: Listener, accepted: list[str], timeout_s: float) -> float:
    """Until every accepted message was processed, or timeout; returns the time waited."""
    started = time.monotonic()
    missing = await listener.missing(accepted)
    while missing and time.monotonic() - started < timeout_s:
        await asyncio.sleep(0.25)
        missing = await listener.missing()
    return time.monotonic() - started


async def run(settings: phases.Settings, tag: str, results_dir: Path, base_port: int) -> dict:
    vhost, database = infra.run_names(tag)
    ports = dict(zip(SERVICES, range(base_port, base_port + 4), strict=True))
    busy = [p for p in ports.values() if not infra.port_is_free(p)]
    if busy:
        raise RuntimeError(f"ports already in use: {busy} (pass --port to use others)")
    log_path = results_dir / f"{tag}-wabus.log"
    run_prefix = f"WB{tag.replace('-', '')}"
    env = {**os.environ, "WABUS_AMQP_URL": infra.amqp_url(vhost), "WABUS_DATABASE_URL": infra.database_url(database),
           "WABUS_LOG_LEVEL": "WARNING", **{f"WABUS_{n.upper()}_PORT": str(p) for n, p in ports.items()}}
    url = f"http://127.0.0.1:{ports['gateway']}/webhooks/waha/{TENANT}"
    report: dict = {"vhost": vhost, "database": database, "log": str(log_path.relative_to(ROOT)),
                    "ports": ports, "url": url}

    up: infra.Process | None = None
    listener: Listener | None = None
    try:
        infra.add_vhost(vhost)  # inside the try: a half-made vhost is deleted too
        print(f"wabus: starting `wabus up` (log: {log_path})", flush=True)
        up = infra.Process("wabus up", [*_wabus_command(), "up"], env, log_path, ROOT)
        async with load.new_session(limit=8) as http:
            for name, port in ports.items():
                await infra.wait_until(lambda p=port: infra.http_ok(http, f"http://127.0.0.1:{p}/readyz"),
                                       timeout_s=120, what=f"wabus {name} /readyz", alive=up.alive)
        up.remember_children()
        secret = secrets.token_hex(32)
        await _add_tenant(env, secret)

        listener = Listener(infra.amqp_url(vhost), run_prefix, lifetime_s=3600)
        await listener.ready()

        print(f"wabus: warming up with {settings.warmup} webhooks", flush=True)
        warm = load.build_batch(run_prefix + "W", settings.warmup, secret)
        async with load.Sender(url, limit=1) as sender:
            warm_record = await load.trickle(sender, warm)
        if sum(warm_record.accepted) != settings.warmup:
            raise RuntimeError(f"warm-up not accepted: {dict(warm_record.errors)}")
        await _wait_for(listener, "W", settings.warmup, 60)

        print("wabus: building signed bodies", flush=True)
        fixed_batch = load.build_batch(run_prefix + "F", settings.fixed_count, secret)
        max_batch = load.build_batch(run_prefix + "M", settings.max_count, secret)
        groups: cpu.Groups = {
            "load generator": lambda: [os.getpid(), *( [listener.pid] if listener else [])],
            **{name: _service_pids(up, name) for name in SERVICES},
            "postgres": cpu.pids_named("postgres"),
            "rabbitmq": cpu.pids_named("beam.smp"),
        }

        print(f"wabus: fixed rate, {settings.rate:g}/s for {settings.duration_s:g} s", flush=True)
        fixed = await phases.fixed_rate(url, fixed_batch, settings, groups)
        acks = phases.ack_report(fixed, window_s=settings.duration_s)
        print(f"wabus: draining (up to {settings.drain_s:g} s)", flush=True)
        drain_cpu_before = cpu.snapshot(groups)
        # by id: a request that timed out here may still have been committed, so counts mislead
        waited = await _drain(listener, phases.accepted_ids(fixed, fixed_batch), settings.drain_s)
        # a drain of under a second is too short a sample to say anything
        drain_cpu = cpu.usage(drain_cpu_before, cpu.snapshot(groups)) if waited >= 1 else None
        heard = await listener.stop()
        listener = None
        arrived = {}
        for message_id, at in heard["arrived"].items():
            index = phases.index_of(fixed_batch, message_id)
            if index is not None:
                arrived[index] = at
        report["fixed"] = {**acks, **phases.e2e_report(fixed, fixed_batch, arrived, window_s=settings.duration_s,
                                                       drain_waited_s=waited),
                           "drain_cpu_pct_of_one_core": drain_cpu, "metrics_after": await _scrape(ports)}
        del fixed_batch, fixed, arrived

        # both systems start the max-rate phase idle: no backlog left from the fixed-rate phase
        print(f"wabus: settling (up to {SETTLE_S:g} s)", flush=True)
        settled = await cpu.settle(SETTLE_S)
        print(f"wabus: max rate, {settings.concurrency} senders for {settings.max_duration_s:g} s", flush=True)
        maximum = await phases.max_rate(url, max_batch, settings, groups)
        report["max"] = {**phases.ack_report(maximum), "settled_before": settled,
                         "batch_exhausted": maximum.record.used >= len(max_batch),
                         "metrics_after": await _scrape(ports)}
    finally:
        # every step on its own: one failing must not leave the others undone
        if listener is not None:
            with contextlib.suppress(Exception):
                await listener.stop()
        if up is not None:
            print("wabus: stopping (SIGINT)", flush=True)
            with contextlib.suppress(Exception):
                report["exit_code"] = await asyncio.to_thread(up.stop, signal.SIGINT, 90)
        with contextlib.suppress(Exception):
            await infra.drop_database(database)
        infra.delete_vhost(vhost)
    return report
