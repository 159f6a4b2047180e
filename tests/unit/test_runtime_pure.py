import random
from datetime import UTC, datetime, timedelta

import pytest

from shared.events.consumer import backoff_s
from shared.events.jobs import due_tick, tick_at
from shared.events.logs import mask_phone
from shared.events.topology import Subscription, queue_arguments, retry_queue_arguments


def test_backoff_grows_exponentially_within_jitter_bounds():
    rng = random.Random(7)
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (10, 60.0)]:
        values = [backoff_s(attempt, base_s=1.0, max_s=60.0, rng=rng) for _ in range(200)]
        assert all(ceiling / 2 <= v <= ceiling for v in values)
        assert max(values) - min(values) > ceiling / 10  # jittered, not constant


def test_due_tick_runs_each_tick_once():
    every = 60.0
    now = datetime(2026, 11, 22, 10, 0, 30, tzinfo=UTC)
    first = due_tick(now, None, every, epoch=1)
    assert first is not None and first.at == datetime(2026, 11, 22, 10, 0, tzinfo=UTC) and first.missed == 0
    assert due_tick(now + timedelta(seconds=20), first.at, every, epoch=1) is None
    second = due_tick(now + timedelta(seconds=40), first.at, every, epoch=1)
    assert second is not None and second.at == first.at + timedelta(minutes=1)


def test_missed_ticks_are_caught_up_once_with_the_count():
    last = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
    tick = due_tick(last + timedelta(minutes=5, seconds=10), last, 60.0, epoch=3)
    assert tick is not None
    assert tick.at == last + timedelta(minutes=5)
    assert tick.previous == last and tick.missed == 4 and tick.epoch == 3


def test_ticks_align_to_the_period():
    assert tick_at(datetime(2026, 1, 1, 0, 0, 59, tzinfo=UTC), 30) == datetime(2026, 1, 1, 0, 0, 30, tzinfo=UTC)


@pytest.mark.parametrize("raw, masked", [
    ("+212693955230", "+2126******30"),
    ("212693955230@c.us", "2126******30@c.us"),
    ("123", "***"),
    (None, None),
])
def test_phone_numbers_are_masked(raw, masked):
    assert mask_phone(raw) == masked


async def _noop(event, uow):
    return []


def test_queues_set_delivery_limit_and_dead_lettering_explicitly():
    sub = Subscription("notifier.turns", "wabus.scheduler", ["turn.reached"], _noop)
    args = queue_arguments("notifier", sub)
    assert args["x-queue-type"] == "quorum"
    assert args["x-delivery-limit"] > 0
    assert args["x-dead-letter-exchange"] == "wabus.notifier.dead"
    assert args["x-dead-letter-strategy"] == "at-least-once" and args["x-overflow"] == "reject-publish"
    retry = retry_queue_arguments()
    assert retry["x-dead-letter-exchange"] == "" and "x-dead-letter-routing-key" not in retry
