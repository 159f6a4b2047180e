import asyncio

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


async def test_requests_that_miss_together_share_one_load():
    loads: list[str] = []
    release = asyncio.Event()

    async def load(key: str) -> str:
        loads.append(key)
        await release.wait()
        return key.upper()

    cache = ReadThrough(load, ttl_s=60)
    waiting = [asyncio.create_task(cache.get("a")) for _ in range(50)]
    await asyncio.sleep(0)
    release.set()
    assert await asyncio.gather(*waiting) == ["A"] * 50
    assert loads == ["a"]


async def test_a_failed_load_reaches_every_waiter_and_the_next_request_loads_again():
    attempts = 0
    release = asyncio.Event()

    async def load(key: str) -> str:
        nonlocal attempts
        attempts += 1
        await release.wait()
        if attempts == 1:
            raise ConnectionError("database down")
        return key

    cache = ReadThrough(load, ttl_s=60)
    waiting = [asyncio.create_task(cache.get("a")) for _ in range(3)]
    await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert [type(r) for r in results] == [ConnectionError] * 3
    assert await cache.get("a") == "a" and attempts == 2


async def test_a_waiter_that_gives_up_does_not_cancel_the_load_for_the_others():
    release = asyncio.Event()

    async def load(key: str) -> str:
        await release.wait()
        return key

    cache = ReadThrough(load, ttl_s=60)
    impatient = asyncio.create_task(cache.get("a"))
    patient = asyncio.create_task(cache.get("a"))
    await asyncio.sleep(0)
    impatient.cancel()
    release.set()
    assert await patient == "a"
    assert impatient.cancelled()
