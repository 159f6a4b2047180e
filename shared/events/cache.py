"""A short-lived read-through cache for lookups made on every request (tenants, API keys)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class ReadThrough(Generic[K, V]):
    """Values, misses included, kept for `ttl_s`: a change (a revoked key) shows within that time.

    The requests that miss one key while it loads wait for that one load. Under load an expiry would
    otherwise send every request in flight to the database at once, where they queue for the same
    pool as the work they are part of.
    """

    def __init__(self, load: Callable[[K], Awaitable[V]], ttl_s: float, max_entries: int = 10_000):
        self._load = load
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._entries: dict[K, tuple[float, V]] = {}
        self._loading: dict[K, asyncio.Task[V]] = {}

    async def get(self, key: K) -> V:
        hit = self._entries.get(key)
        if hit is not None and time.monotonic() - hit[0] < self._ttl_s:
            return hit[1]
        loading = self._loading.get(key)
        if loading is None:
            loading = self._loading[key] = asyncio.create_task(self._fill(key))
            loading.add_done_callback(lambda done: self._settled(key, done))
        # A waiter that gives up (its client went away) must not cancel the load the others wait for.
        return await asyncio.shield(loading)

    async def _fill(self, key: K) -> V:
        started = time.monotonic()
        value = await self._load(key)
        if len(self._entries) >= self._max_entries:
            self._entries.clear()  # unknown keys from a scan must not grow this without bound
        self._entries[key] = (started, value)
        return value

    def _settled(self, key: K, done: asyncio.Task[V]) -> None:
        del self._loading[key]
        if not done.cancelled():
            done.exception()  # retrieved here too, in case every waiter has gone; each waiter still gets it
