"""A notifier killed with SIGKILL in the middle of a broadcast: the next one finishes it, nobody twice."""

import asyncio
import os
import signal
import socket
import sys

import aiohttp

from bench.infra import children_of
from services.notifier.fake_provider import running_fake_provider
from tests.integration.inbound.conftest import add_tenants
from tests.integration.scheduler.conftest import add_keys
from tests.support import eventually

from .conftest import TENANT, add_senders


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _notifier(isolated, fake_url: str, port: int, processes) -> asyncio.subprocess.Process:
    env = {**isolated.env(), "WABUS_PROVIDER": "waha", "WABUS_PROVIDER_URL": fake_url,
           "WABUS_NOTIFIER_PORT": str(port), "WABUS_NOTIFIER_RATE_PER_S": "10", "WABUS_NOTIFIER_RATE_BURST": "1",
           "WABUS_NOTIFIER_RECONCILE_AFTER_S": "0.5", "WABUS_NOTIFIER_IDLE_POLL_S": "0.2",
           "WABUS_NOTIFIER_SEND_TIMEOUT_S": "2", "WABUS_LEADER_POLL_INTERVAL_S": "0.2"}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "services.cli", "run", "notifier", env=env,
                                                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    processes.append(proc)
    return proc


async def _ready(http, url: str) -> bool:
    try:
        async with http.get(url + "/readyz") as r:
            return r.status == 200
    except aiohttp.ClientError:
        return False


async def test_kill_9_mid_broadcast_resumes_without_skipping_or_doubling(isolated, processes):
    await add_tenants(isolated.database_url)
    await add_senders(isolated.database_url)
    keys = await add_keys(isolated.database_url, tenants=(TENANT,), schemas=("notifier",))
    recipients = [f"+2126939554{i:02d}" for i in range(40)]
    async with running_fake_provider(latency_s=0.02) as fake, aiohttp.ClientSession() as http:
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        first = await _notifier(isolated, fake.url, port, processes)
        await eventually(lambda: _ready(http, url), timeout=60, what="notifier ready")
        async with http.post(f"{url}/v1/broadcasts", json={"message": "Rappel", "recipients": recipients},
                             headers={"Authorization": f"Bearer {keys[TENANT]['staff']}"}) as r:
            assert r.status == 202
            broadcast_id = (await r.json())["broadcast_id"]
        await eventually(lambda: _count(fake, 8), timeout=30, what="a few sends")
        workers = children_of(first.pid)
        assert workers, "the notifier's phone number workers"
        first.send_signal(signal.SIGKILL)
        await first.wait()
        await eventually(lambda: _none_alive(workers), timeout=10, what="its workers gone with it")
        killed_at = len(fake.sent)
        assert killed_at < len(recipients)

        await _notifier(isolated, fake.url, port, processes)
        await eventually(lambda: _ready(http, url), timeout=60, what="second notifier ready")

        async def finished():
            async with http.get(f"{url}/v1/broadcasts/{broadcast_id}", params={"limit": 100},
                                headers={"Authorization": f"Bearer {keys[TENANT]['viewer']}"}) as r:
                b = await r.json()
            return b if b["status"] in ("completed", "partial", "failed") else None

        done = await eventually(finished, timeout=60, what="broadcast finished")
        await asyncio.sleep(1)
    assert done["status"] == "completed" and done["sent_count"] == len(recipients)
    sent_to = [s.to for s in fake.sent]
    assert sorted(sent_to) == sorted(r[1:] for r in recipients), "a recipient skipped or sent twice"


async def _count(fake, n: int) -> bool:
    return len(fake.sent) >= n


async def _none_alive(pids: list[int]) -> bool:
    return not any(os.path.exists(f"/proc/{pid}") for pid in pids)
