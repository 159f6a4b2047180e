from shared.events.cache import ReadThrough


async def test_values_and_misses_are_read_once_within_their_time():
    loads: list[str] = []

    async def load(key: str) -> str | None:
        loads.append(key)
        return None if key == "unknown" else key.upper()

    cache = ReadThrough(load, ttl_s=60)
    assert [await cache.get(k) for k in ("a", "a", "unknown", "unknown")] == ["A", "A", None, None]
    assert loads == ["a", "unknown"]


async def test_expired_entries_are_read_again_and_the_cache_stays_bounded():
    loads: list[int] = []

    async def load(key: int) -> int:
        loads.append(key)
        return key

    expiring = ReadThrough(load, ttl_s=0)
    await expiring.get(1)
    await expiring.get(1)
    assert loads == [1, 1]

    bounded = ReadThrough(load, ttl_s=60, max_entries=3)
    for key in range(10):
        await bounded.get(key)
    assert len(bounded._entries) <= 3
