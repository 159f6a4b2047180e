"""Group commit: requests that arrive while a transaction commits share the next one.

One commit per request caps durable ingest at what fsync allows; a shared commit amortises it, and
the batch grows by itself under load. A single worker keeps batches, and so rows, in arrival order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import asyncpg

from . import db
from .errors import DatabaseUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Pending(Generic[T, R]):
    items: Sequence[T]
    future: asyncio.Future[list[R]]


class GroupCommit(Generic[T, R]):
    def __init__(self, pool: asyncpg.Pool, apply: Callable[[asyncpg.Connection, list[T]], Awaitable[list[R]]], *,
                 max_batch: int = 1000, acquire_timeout_s: float = 10.0, outage_backoff_s: float | None = None,
                 stopping: asyncio.Event | None = None, transaction: bool = True):
        self._pool = pool
        # Unset: `apply` gets a connection outside any transaction, for work done in one statement (a
        # transaction's BEGIN and COMMIT are two more round trips) or that opens its own.
        self._transaction = transaction
        self._acquire_timeout_s = acquire_timeout_s
        # Set: an unreachable database holds the batch, tried again until it answers (or `stopping`),
        # so that no later batch commits before it. Unset: the callers get DatabaseUnavailable at once.
        self._outage_backoff_s = outage_backoff_s
        self._stopping = stopping
        self._apply = apply
        self._max_batch = max_batch
        self._queue: asyncio.Queue[_Pending[T, R]] = asyncio.Queue()
        self._worker: asyncio.Task | None = None

    def start(self) -> None:
        self._worker = asyncio.create_task(self._work(), name="group-commit")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        while not self._queue.empty():
            pending = self._queue.get_nowait()
            if not pending.future.done():
                pending.future.set_exception(RuntimeError("shutting down"))

    async def submit(self, items: Sequence[T]) -> list[R]:
        """Wait until `items` are committed (or the commit failed, which raises here)."""
        if not items:
            return []
        future: asyncio.Future[list[R]] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(items, future))
        return await future

    async def _work(self) -> None:
        while True:
            batch = [await self._queue.get()]
            count = len(batch[0].items)
            while count < self._max_batch and not self._queue.empty():
                pending = self._queue.get_nowait()
                batch.append(pending)
                count += len(pending.items)
            items = [item for pending in batch for item in pending.items]
            try:
                results = await self._commit(items)
            except asyncio.CancelledError:
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(RuntimeError("shutting down"))
                raise
            except Exception as exc:  # noqa: BLE001 - every caller in the batch gets the error
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(exc)
                continue
            offset = 0
            for pending in batch:
                if not pending.future.done():  # the caller may have gone (client disconnected)
                    pending.future.set_result(results[offset:offset + len(pending.items)])
                offset += len(pending.items)

    async def _commit(self, items: list[T]) -> list[R]:
        while True:
            try:
                async with db.connection(self._pool, acquire_timeout=self._acquire_timeout_s,
                                         transaction=self._transaction) as conn:
                    return await self._apply(conn, items)
            except DatabaseUnavailable:
                if self._outage_backoff_s is None or (self._stopping is not None and self._stopping.is_set()):
                    raise
                log.warning("database unavailable; group held", extra={"items": len(items)})
                await asyncio.sleep(self._outage_backoff_s)
