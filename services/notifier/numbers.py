"""Phone numbers for big recipient lists, normalised off the event loop.

phonenumbers takes about 60 µs a number: 10,000 would hold the loop for over half a second, and
every send, event and health check with it. Short lists go to a thread; long ones are split over
worker processes, which also use the other cores.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor

from shared.phones import to_e164_each

IN_A_THREAD_UP_TO = 500


def _start_worker() -> None:
    # Ctrl-C reaches the whole process group: the service shuts its workers down in order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A service killed outright (SIGKILL, the OOM killer) cannot: its workers go when they see it gone.
    threading.Thread(target=_exit_with, args=(os.getppid(),), name="parent-watch", daemon=True).start()


def _exit_with(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


class Numbers:
    def __init__(self, workers: int):
        self._workers = workers
        self._pool: ProcessPoolExecutor | None = None

    async def start(self) -> None:
        """Start the workers and let each import phonenumbers now, not in the first big request."""
        if self._workers:
            # spawn, not fork: a fork of a process with a running event loop and threads is not safe.
            self._pool = ProcessPoolExecutor(self._workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_start_worker)
            loop = asyncio.get_running_loop()
            await asyncio.gather(*(loop.run_in_executor(self._pool, to_e164_each, ["+212600000000"], None)
                                   for _ in range(self._workers)))

    async def close(self) -> None:
        if self._pool is not None:
            await asyncio.to_thread(self._pool.shutdown, wait=True, cancel_futures=True)

    async def to_e164(self, numbers: list[str], region: str) -> list[tuple[str | None, str | None]]:
        """`(E.164, None)` or `(None, why not)` for each number, in order."""
        if self._pool is None or len(numbers) <= IN_A_THREAD_UP_TO:
            return await asyncio.to_thread(to_e164_each, numbers, region)
        loop = asyncio.get_running_loop()
        size = -(-len(numbers) // self._workers)
        parts = await asyncio.gather(*(loop.run_in_executor(self._pool, to_e164_each, numbers[i:i + size], region)
                                       for i in range(0, len(numbers), size)))
        return [result for part in parts for result in part]
