"""What the broker routes to a subscription's queues: shards by chat, and only the events it selects."""

from datetime import UTC, datetime

import aio_pika

from shared.events import topology
from shared.events.catalog import (
    INTENT_HEADER,
    REPLY_HEADER,
    Intent,
    MessageProcessed,
    Provider,
    WhatsAppMessage,
    decode,
)
from shared.events.envelope import SHARD_HEADER, Envelope
from shared.events.topology import Subscription


def processed(n: int, *, intent: str | None = None, reply: str | None = None) -> Envelope:
    message = WhatsAppMessage(provider=Provider.WAHA, provider_message_id=f"M{n}", chat_id=f"2126000{n:05d}@c.us",
                              sent_at=datetime.now(UTC))
    return Envelope.new(MessageProcessed(message=message, conversation_id="c", processing_ms=1,
                                         intent=Intent(name=intent) if intent else None, reply_text=reply),
                        tenant_id="clinic-a")


async def _counts(channel, queues: list[str]) -> dict[str, int]:
    counts = {}
    for name in queues:
        declared = await channel.declare_queue(name, passive=True)
        counts[name] = declared.declaration_result.message_count
    return counts


async def test_a_sharded_subscription_routes_each_event_to_exactly_one_shard_by_its_chat(isolated):
    sub = Subscription("processor.sharded", "wabus.processor", ["message.processed"], _noop, shards=4)
    connection = await aio_pika.connect(isolated.amqp_url, timeout=10)
    try:
        channel = await connection.channel()
        await topology.declare(channel, "processor", [sub])
        exchange = await channel.get_exchange("wabus.processor")
        sent: dict[int, int] = {}
        for n in range(40):
            envelope = processed(n)
            slot = int(envelope.headers()[SHARD_HEADER])
            sent[slot % 4] = sent.get(slot % 4, 0) + 1
            await exchange.publish(aio_pika.Message(envelope.encode(), headers=envelope.headers()),
                                   routing_key="message.processed")
        counts = await _counts(channel, [f"processor.sharded.{k}" for k in range(4)])
    finally:
        await connection.close()
    assert sum(counts.values()) == 40  # each event in one shard, not in every shard
    assert counts == {f"processor.sharded.{k}": sent.get(k, 0) for k in range(4)}


async def test_a_subscription_with_only_gets_just_the_events_it_selects_and_declaring_again_keeps_that(isolated):
    only = [{INTENT_HEADER: "join_queue"}, {REPLY_HEADER: "yes"}]
    plain = Subscription("scheduler.picky", "wabus.processor", ["message.processed"], _noop, only=only)
    sharded = Subscription("scheduler.picky-shards", "wabus.processor", ["message.processed"], _noop, shards=2,
                           only=only)
    everything = Subscription("scheduler.everything", "wabus.processor", ["message.processed"], _noop)
    events = [processed(1), processed(2, intent="join_queue"), processed(3, intent="help", reply="Send JOIN OPD"),
              processed(4, intent="leave"), processed(5, intent="join_queue", reply="Which department?")]
    connection = await aio_pika.connect(isolated.amqp_url, timeout=10)
    try:
        channel = await connection.channel()
        for _ in range(2):  # every start declares again
            await topology.declare(channel, "scheduler", [plain, sharded, everything])
        exchange = await channel.get_exchange("wabus.processor")
        for envelope in events:
            await exchange.publish(aio_pika.Message(envelope.encode(), headers=envelope.headers()),
                                   routing_key="message.processed")
        counts = await _counts(channel, ["scheduler.picky", "scheduler.picky-shards.0", "scheduler.picky-shards.1",
                                         "scheduler.everything"])
        picked = []
        while (message := await (await channel.get_queue("scheduler.picky")).get(fail=False)) is not None:
            picked.append(decode(message.body).id)
    finally:
        await connection.close()
    assert counts["scheduler.picky"] == 3  # each once, though #5 matches both sets
    assert counts["scheduler.picky-shards.0"] + counts["scheduler.picky-shards.1"] == 3
    assert counts["scheduler.everything"] == 5
    assert picked == [events[1].id, events[2].id, events[4].id]


async def _noop(envelope, conn):
    return []
