"""`python -m bench ingest`: wabus, then the Celery + Flask baseline, under the same two phases."""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

from . import baseline_target, cpu, infra, machine, report, wabus_target
from .phases import Settings

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOCS = ROOT / "docs" / "benchmarks.md"

# wabus's quorum queues take about 90 of the broker's file handles; the baseline a few more.
BROKER_HANDLES_NEEDED = 150

HEADER = """# Benchmarks

Run with `./dev bench ingest`; how it works and its options are in [bench/README.md](../bench/README.md).
The section below is rewritten by each run that is not given `--no-write`.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rate", type=float, default=1000.0, help="fixed-rate phase: webhooks per second (1000)")
    p.add_argument("--duration", type=float, default=30.0, help="fixed-rate phase: seconds of sending (30)")
    p.add_argument("--drain", type=float, default=30.0,
                   help="after the fixed-rate phase: most seconds to wait for unprocessed messages (30)")
    p.add_argument("--max-duration", type=float, default=20.0, help="max-rate phase: seconds (20)")
    p.add_argument("--concurrency", type=int, default=64, help="max-rate phase: concurrent senders (64)")
    p.add_argument("--warmup", type=int, default=50, help="webhooks sent before the phases (50)")
    p.add_argument("--quiet-wait", type=float, default=300.0,
                   help="before each system: most seconds to wait for other load on the machine to settle (300)")
    p.add_argument("--skip-baseline", action="store_true", help="measure wabus only")
    p.add_argument("--no-write", action="store_true", help="do not rewrite docs/benchmarks.md")
    p.add_argument("--port", type=int, default=18080, help="first of four ports for wabus's services (18080)")
    p.add_argument("--baseline-port", type=int, default=18090, help="port for the baseline's gunicorn (18090)")
    p.add_argument("--gunicorn-workers", type=int, default=4, help="baseline: gunicorn sync workers (4)")
    p.add_argument("--celery-concurrency", type=int, default=4, help="baseline: Celery prefork processes (4)")


def _check(args: argparse.Namespace) -> None:
    # Every loop is bounded by these; refuse values that would make a run unbounded in practice.
    if not (0 < args.rate <= 20_000 and 0 < args.duration <= 600 and 0 < args.max_duration <= 600
            and 0 <= args.drain <= 600 and 0 <= args.quiet_wait <= 3600 and 1 <= args.concurrency <= 1024 and 1 <= args.warmup <= 10_000):
        raise SystemExit("bench ingest: --rate (0, 20000], --duration/--max-duration (0, 600], --drain [0, 600], "
                         "--quiet-wait [0, 3600], --concurrency [1, 1024], --warmup [1, 10000]")


async def run(args: argparse.Namespace, argv: list[str]) -> int:
    _check(args)
    try:
        return await _run(args, argv)
    finally:
        left = await asyncio.to_thread(infra.stop_all_left)
        if left:
            print(f"stopped what was still running: {', '.join(left)}", file=sys.stderr)


async def _run(args: argparse.Namespace, argv: list[str]) -> int:
    RESULTS.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    now = datetime.now(UTC)
    tag = now.strftime("%Y%m%d-%H%M%S")
    settings = Settings(rate=args.rate, duration_s=args.duration, max_duration_s=args.max_duration,
                        concurrency=args.concurrency, drain_s=args.drain, warmup=args.warmup)
    json_path = RESULTS / f"{tag}.json"
    results: dict = {
        "started_at": now.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "command": "./dev bench " + shlex.join(argv),
        "json": str(json_path.relative_to(ROOT)),
        "parameters": {"rate": args.rate, "duration_s": args.duration, "drain_s": args.drain,
                       "max_duration_s": args.max_duration, "concurrency": args.concurrency, "warmup": args.warmup,
                       "gunicorn_workers": args.gunicorn_workers, "celery_concurrency": args.celery_concurrency,
                       "quiet_wait_s": args.quiet_wait},
        "machine": await machine.describe(ROOT),
        "notes": [],
    }
    swept = await infra.sweep_leftovers()
    if swept:
        print(f"removed leftovers of earlier benchmark runs that did not finish: {', '.join(swept)}", flush=True)
    handles = infra.broker_file_handles()
    if handles is not None:
        results["machine"]["rabbitmq_file_handles_at_start"] = f"{handles[0]} of {handles[1]}"
        if handles[1] - handles[0] < BROKER_HANDLES_NEEDED:
            raise SystemExit(
                f"bench ingest: RabbitMQ's file handle cache has {handles[0]} of {handles[1]} handles in use; this run "
                f"needs about {BROKER_HANDLES_NEEDED}, and a vhost that cannot get them blocks every later add_vhost. "
                "Look for leftover vhosts (`rabbitmqctl list_vhosts`).")
    failed = False
    before = await cpu.wait_until_quiet(args.quiet_wait)
    try:
        results["wabus"] = await wabus_target.run(settings, tag, RESULTS, args.port)
    except Exception as exc:  # noqa: BLE001 - recorded, the baseline still runs, the exit code says so
        traceback.print_exc()
        results["wabus"] = {"error": f"{type(exc).__name__}: {exc}"}
        failed = True
    results["wabus"]["machine_before"] = before
    if args.skip_baseline:
        results["notes"].append("The baseline was skipped in this run (--skip-baseline): no ratio.")
    else:
        before = await cpu.wait_until_quiet(args.quiet_wait)
        try:
            results["baseline"] = await baseline_target.run(
                settings, tag, RESULTS, args.baseline_port, web_workers=args.gunicorn_workers,
                worker_concurrency=args.celery_concurrency)
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc()
            results["baseline"] = {"error": f"{type(exc).__name__}: {exc}"}
            failed = True
        results["baseline"]["machine_before"] = before
    results["ratio_max_accepted"] = report.ratio(results)
    results["elapsed_s"] = round(time.monotonic() - started, 1)

    json_path.write_text(json.dumps(results, indent=2))
    print(report.console(results))
    print(f"\nraw results: {json_path}")
    if failed:
        print("a part of the run failed: docs/benchmarks.md left as it was", file=sys.stderr)
        return 1
    if not args.no_write:
        report.write_docs(DOCS, results, HEADER)
        print(f"results written to {DOCS}")
    return 0
