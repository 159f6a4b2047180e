"""A 10,000-recipient broadcast: how long the API takes to answer, and how fast one notifier sends.

The notifier runs as `wabus run notifier` against the fake provider (`wabus fake-provider`, its own
process) with no rate limit, on its own database and vhost, removed afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

from . import cpu, infra, machine

ROOT = Path(__file__).resolve().parent.parent
TENANT = "bench"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipients", type=int, default=10_000)
    parser.add_argument("--in-flight", type=int, default=256, help="sends in flight per session (no rate limit)")
    parser.add_argument("--fake-latency-s", type=float, default=0.0, help="the fake provider's answer delay")
    parser.add_argument("--timeout-s", type=float, default=600.0)
    parser.add_argument("--output", default=str(ROOT / "bench" / "results" / "broadcast.json"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wabus() -> list[str]:
    script = Path(sys.executable).with_name("wabus")
    return [str(script)] if script.exists() else [sys.executable, "-m", "services.cli"]


async def _wabus_json(env: dict[str, str], *args: str) -> dict:
    proc = await asyncio.create_subprocess_exec(*_wabus(), *args, env=env, cwd=ROOT, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"wabus {' '.join(args)} failed: {err.decode().strip()}")
    text = out.decode()
    return json.loads(text[text.index("{"):])


def _recipients(n: int) -> list[str]:
    # Valid Moroccan mobile numbers, national form: normalised by the API like real input.
    return [f"06{10_000_000 + i:08d}" for i in range(n)]


async def run(args: argparse.Namespace) -> int:
    vhost, database = infra.run_names("broadcast")
    logs = ROOT / "bench" / "results"
    logs.mkdir(parents=True, exist_ok=True)
    infra.add_vhost(vhost)
    await infra.create_database(database)
    notifier_port, fake_port = _free_port(), _free_port()
    env = {**os.environ, "WABUS_DATABASE_URL": infra.database_url(database), "WABUS_AMQP_URL": infra.amqp_url(vhost),
           "WABUS_PROVIDER": "waha", "WABUS_PROVIDER_URL": f"http://127.0.0.1:{fake_port}",
           "WABUS_NOTIFIER_PORT": str(notifier_port), "WABUS_NOTIFIER_RATE_PER_S": "0",
           "WABUS_NOTIFIER_MAX_IN_FLIGHT_PER_SESSION": str(args.in_flight), "WABUS_NOTIFIER_CLAIM_BATCH": "500",
           "WABUS_LOG_LEVEL": "WARNING"}
    processes: list[infra.Process] = []
    try:
        await _wabus_json(env, "tenants", "add", TENANT, "--provider", "waha", "--session", "default",
                          "--region", "MA", "--no-secret")
        key = (await _wabus_json(env, "keys", "add", "--tenant", TENANT, "--role", "staff"))["api_key"]
        processes.append(infra.Process("fake-provider", [*_wabus(), "fake-provider", "--port", str(fake_port),
                                                          "--latency-s", str(args.fake_latency_s)],
                                       env, logs / "broadcast-fake.log", ROOT))
        processes.append(infra.Process("notifier", [*_wabus(), "run", "notifier"], env, logs / "broadcast-notifier.log",
                                       ROOT))
        url = f"http://127.0.0.1:{notifier_port}"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            await infra.wait_until(lambda: infra.http_ok(http, url + "/readyz"), timeout_s=60, what="notifier ready")
            groups = {"notifier": lambda: [processes[1].pid], "fake provider": lambda: [processes[0].pid],
                      "postgres": cpu.pids_named("postgres")}
            before = cpu.snapshot(groups)
            body = {"message": "La clinique sera fermée vendredi 27.", "recipients": _recipients(args.recipients)}
            started = time.perf_counter()
            async with http.post(url + "/v1/broadcasts", json=body, headers={"Authorization": f"Bearer {key}"}) as r:
                answer = await r.json()
                answered_s = time.perf_counter() - started
                answered_at = datetime.now(UTC)
            if r.status != 202:
                raise RuntimeError(f"broadcast refused: {r.status} {answer}")
            broadcast_id = answer["broadcast_id"]
            progress = []
            while time.perf_counter() - started < args.timeout_s:
                async with http.get(f"{url}/v1/broadcasts/{broadcast_id}", params={"limit": 1},
                                    headers={"Authorization": f"Bearer {key}"}) as r:
                    state = await r.json()
                progress.append((round(time.perf_counter() - started, 2), state["sent_count"]))
                if state["status"] in ("completed", "partial", "failed"):
                    break
                # Each look counts the recipients by status: often enough to follow, rarely enough to
                # leave the machine to the notifier. The end is timed by the notifier's finished_at.
                await asyncio.sleep(0.25)
            after = cpu.snapshot(groups)
        finished_at = datetime.fromisoformat(state["finished_at"]) if state["finished_at"] else datetime.now(UTC)
        sending_s = (finished_at - answered_at).total_seconds()
        result = {
            "benchmark": "broadcast", "machine": await machine.describe(ROOT),
            "recipients": args.recipients, "in_flight_per_session": args.in_flight,
            "fake_latency_s": args.fake_latency_s,
            "api_answer_s": round(answered_s, 3), "queued": answer["queued_count"],
            "final_status": state["status"], "sent": state["sent_count"], "failed": state["failed_count"],
            "sending_s": round(sending_s, 2), "sends_per_s": round(state["sent_count"] / sending_s, 1),
            "cpu_pct": cpu.usage(before, after), "progress": progress[:: max(1, len(progress) // 20)],
        }
    finally:
        for process in reversed(processes):
            process.stop(signal.SIGTERM, 30)
        infra.delete_vhost(vhost)
        await infra.drop_database(database)
    Path(args.output).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k not in ("machine", "progress")}, indent=2))
    return 0
