"""A short-lived read-through cache for lookups made on every request (tenants, API keys)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class ReadThrough(Generic[K, V]):
    """Values, misses included, kept for `ttl_s`: a change (a revoked key) shows within that time."""

    def __init__(self, load: Callable[[K], Awaitable[V]], ttl_s: float, max_entries: int = 10_000):
        self._load = load
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._entries: dict[K, tuple[float, V]] = {}

    async def get(self, key: K) -> V:
        now = time.monotonic()
        hit = self._entries.get(key)
        if hit is not None and now - hit[0] < self._ttl_s:
            return hit[1]
        value = await self._load(key)
        if len(self._entries) >= self._max_entries:
            self._entries.clear()  # unknown keys from a scan must not grow this without bound
        self._entries[key] = (now, value)
        return value
