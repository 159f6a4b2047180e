"""A consumer service in its own process, for tests that signal or kill it.

    python -m tests.integration.runtime.consumer_process
"""

import asyncio

from shared.events.runtime import run_service
from shared.events.settings import CommonSettings

from .conftest import consumer_spec, record_effect


async def slow_record(envelope, conn):
    await asyncio.sleep(0.1)  # 300 events take ~1.5 s at prefetch 20: the signal lands mid-load
    return await record_effect(envelope, conn)


if __name__ == "__main__":
    asyncio.run(run_service(CommonSettings(), consumer_spec(slow_record, prefetch=20)))
