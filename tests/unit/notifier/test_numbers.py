"""Long recipient lists are normalised in worker processes, in order, with the same answers."""

from services.notifier.numbers import IN_A_THREAD_UP_TO, Numbers
from shared.phones import to_e164_each


async def test_a_long_list_split_over_workers_keeps_its_order_and_reasons():
    numbers = [f"06{10_000_000 + i:08d}" if i % 7 else "12" for i in range(IN_A_THREAD_UP_TO + 101)]
    pool = Numbers(workers=2)
    await pool.start()
    try:
        assert await pool.to_e164(numbers, "MA") == to_e164_each(numbers, "MA")
        assert (await pool.to_e164(["0693955230"], "MA")) == [("+212693955230", None)]
    finally:
        await pool.close()
    assert to_e164_each(["12", "+2126"], "MA")[0] == (None, "too short")
