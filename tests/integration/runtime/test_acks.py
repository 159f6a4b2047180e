"""Deliveries that settle together are acked together; an ack never covers one that is still open."""

import asyncio
from collections import Counter

import aio_pika

from shared.events.consumer import QueueWorker
from tests.support import eventually

QUEUE = "processor.acks"


class Bodies:
    """Processes deliveries by their body, and counts what it has seen."""

    def __init__(self) -> None:
        self.seen: Counter[str] = Counter()
        self.slow_released = asyncio.Event()
        self._group: dict[str, asyncio.Event] = {}

    async def process(self, message: aio_pika.abc.AbstractIncomingMessage) -> bool:
        body = message.body.decode()
        self.seen[body] += 1
        if body == "slow":
            await self.slow_released.wait()
        elif body == "requeue-once":
            return self.seen[body] > 1
        elif body.startswith("group"):
            # A group's six settle in one turn of the loop, as the events of a shared commit do.
            name = body.split("-")[1]
            released = self._group.setdefault(name, asyncio.Event())
            if sum(n for b, n in self.seen.items() if b.startswith(f"group-{name}-")) == 6:
                released.set()
            await released.wait()
        return True

    async def have_seen(self, expected: Counter[str]) -> bool:
        return self.seen == expected


async def _publish(channel: aio_pika.abc.AbstractChannel, bodies: list[str]) -> None:
    for body in bodies:
        await channel.default_exchange.publish(aio_pika.Message(body.encode()), routing_key=QUEUE)


async def _left_in_queue(url: str) -> list[str]:
    """Takes out what comes back once the channels that held deliveries are gone: what was not acked.

    A quorum queue returns a closed channel's deliveries a moment after the close, so a message count
    read at once can miss them. A marker published (and confirmed) after the close is applied after
    the return, and returned deliveries go ahead of it: everything before the marker is what was left.
    """
    async with await aio_pika.connect(url, timeout=10) as connection:
        channel = await connection.channel()
        await channel.default_exchange.publish(aio_pika.Message(b"end"), routing_key=QUEUE)
        queue = await channel.get_queue(QUEUE)
        left: list[str] = []
        async with asyncio.timeout(10), queue.iterator() as deliveries:
            async for message in deliveries:
                await message.ack()
                if message.body == b"end":
                    break
                left.append(message.body.decode())
    return left


async def test_a_group_settled_together_is_acked_and_nothing_open_or_requeued_is_acked_with_it(isolated):
    bodies = Bodies()
    first = ["slow", "requeue-once", *(f"group-a-{i}" for i in range(6)), *(f"single-{i}" for i in range(20))]

    connection = await aio_pika.connect_robust(isolated.amqp_url, timeout=10)
    try:
        channel = await connection.channel()
        await channel.declare_queue(QUEUE, durable=True, arguments={"x-queue-type": "quorum"})
        await _publish(channel, first)
        worker = QueueWorker(QUEUE, 8, bodies.process, stop_timeout_s=1)
        await worker.start(connection)
        # Eight in flight at most, the first held open: the rest get through only if their acks do not
        # wait behind it, and the requeued one comes back only if no ack covered it.
        expected = Counter(first) + Counter(["requeue-once"])
        await eventually(lambda: bodies.have_seen(expected), what="every delivery but the slow one settled")
        await worker.stop()  # the slow one is still open when its channel goes
    finally:
        await connection.close()
        bodies.slow_released.set()
    assert await _left_in_queue(isolated.amqp_url) == ["slow"], "an ack covered an open delivery, or missed one"

    async with await aio_pika.connect_robust(isolated.amqp_url, timeout=10) as connection:
        channel = await connection.channel()
        second = [f"group-b-{i}" for i in range(6)]
        await _publish(channel, second)
        worker = QueueWorker(QUEUE, 8, bodies.process, stop_timeout_s=5)
        await worker.start(connection)
        expected.update(second)
        await eventually(lambda: bodies.have_seen(expected), what="a group with nothing open settled")
        await worker.stop()
    assert await _left_in_queue(isolated.amqp_url) == []
    assert bodies.seen == expected


async def test_a_delivery_its_channel_took_away_mid_processing_leaves_nothing_behind(isolated):
    seen: Counter[str] = Counter()
    held = asyncio.Event()

    async def process(message: aio_pika.abc.AbstractIncomingMessage) -> bool:
        body = message.body.decode()
        seen[body] += 1
        if body == "held" and seen[body] == 1:
            held.set()
            await asyncio.Event().wait()  # until the channel's close cancels it
        return True

    async with await aio_pika.connect_robust(isolated.amqp_url, timeout=10, reconnect_interval=0.2) as connection:
        channel = await connection.channel()
        await channel.declare_queue(QUEUE, durable=True, arguments={"x-queue-type": "quorum"})
        worker = QueueWorker(QUEUE, 8, process, stop_timeout_s=1)
        await worker.start(connection)
        await _publish(channel, ["held"])
        await asyncio.wait_for(held.wait(), timeout=10)
        await isolated.cut_connections()
        await eventually(lambda: _equals(seen, Counter(["held", "held"])), what="redelivered after the reconnect")
        await _publish(channel, [f"after-{i}" for i in range(6)])
        await eventually(lambda: _equals(seen, Counter(["held", "held", *(f"after-{i}" for i in range(6))])),
                         what="the deliveries after the reconnect settled")
        # Nothing of the cut-off delivery is left to stand before later acks (they would go one by one).
        await eventually(lambda: _equals((len(worker._unacked), len(worker._inflight)), (0, 0)),
                         what="no stale delivery left in the worker")
        await worker.stop()
    assert await _left_in_queue(isolated.amqp_url) == []


async def _equals(value: object, expected: object) -> bool:
    return value == expected
