"""SIGTERM under load: in-flight work completes or is redelivered, and nothing is lost or doubled."""

import asyncio
import signal
import sys

from shared.events.errors import PublishFailed
from tests.support import eventually

from .conftest import publisher, turn

TOTAL = 300


async def _start(isolated, log_path):
    env = {**isolated.env(), "WABUS_SHUTDOWN_TIMEOUT_S": "15"}
    log = open(log_path, "wb")  # noqa: SIM115 - closed with the process
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.integration.runtime.consumer_process", env=env, stdout=log, stderr=log,
    )
    return proc, log


async def test_sigterm_under_load_loses_and_doubles_nothing(isolated, effects, tmp_path, processes):
    first, first_log = await _start(isolated, tmp_path / "first.log")
    processes.append(first)
    sent = [turn(n) for n in range(TOTAL)]

    async def routable():
        # A fresh channel per try: publishing to an exchange not yet declared closes the channel.
        async with publisher(isolated.amqp_url) as pub:
            try:
                await pub.publish(sent[0])
                return True
            except PublishFailed:
                return False  # the consumer has not declared its queue yet

    await eventually(routable, timeout=30, what="consumer queue declared")
    async with publisher(isolated.amqp_url) as pub:
        for envelope in sent[1:]:
            await pub.publish(envelope)

    await eventually(lambda: _at_least(effects.count(), 40), timeout=30, what="load under way")
    first.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(first.wait(), timeout=30) == 0, (tmp_path / "first.log").read_text()
    first_log.close()
    applied_by_first = await effects.count()
    assert applied_by_first < TOTAL, "the signal came after all the work; the test proves nothing"

    second, second_log = await _start(isolated, tmp_path / "second.log")
    processes.append(second)
    try:
        await eventually(lambda: _at_least(effects.count(), TOTAL), timeout=60, what="the rest applied")
    finally:
        second.send_signal(signal.SIGTERM)
        await asyncio.wait_for(second.wait(), timeout=30)
        second_log.close()

    per_event = await effects.per_event()
    assert set(per_event) == {str(e.id) for e in sent}
    assert set(per_event.values()) == {1}
    assert "service stopped" in (tmp_path / "first.log").read_text()


async def _at_least(count_coro, n: int) -> bool:
    return (await count_coro) >= n


async def test_sigterm_while_waiting_for_the_database_at_start_up_exits_cleanly(isolated, tmp_path, processes):
    env = {**isolated.env(), "WABUS_DATABASE_URL": "postgresql://127.0.0.1:1/nowhere"}
    with open(tmp_path / "waiting.log", "wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.integration.runtime.consumer_process", env=env, stdout=log, stderr=log,
        )
        processes.append(proc)
        await eventually(lambda: _contains(tmp_path / "waiting.log", "waiting for database"), timeout=30)
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), timeout=30)
    output = (tmp_path / "waiting.log").read_text()
    assert code == 0, output
    assert "service stopped before start-up finished" in output


async def _contains(path, text: str) -> bool:
    return path.exists() and text in path.read_text()
