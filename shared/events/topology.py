"""Exchanges, queues, bindings, delay queues and the dead-letter path, declared in one place.

Per service `S` with a subscription queue `S.purpose`:

    wabus.<publisher> (topic) --keys--> S.purpose (quorum, delivery-limit, DLX wabus.S.dead)
    wabus.S.retry.<n> (fanout) --> S.retry.<n> (quorum): a delivery that failed its n-th attempt waits
        here for its backoff; it was published with the queue it came from as routing key, so when it
        expires it dead-letters through the default exchange straight back into that queue
    wabus.S.dead (fanout) --> S.dead (quorum): what the broker itself gave up on (delivery limit)

A subscription with `only` takes a detour through its own headers exchange, which passes on just the
events whose selectors (Event.selectors) match: wabus.<publisher> --keys--> wabus.S.purpose.only
(headers) --any of `only`--> the queue, or its shards' exchange.

Retry queues are per service and attempt, not per subscription: one per level keeps similar TTLs
together (RabbitMQ expires only at a queue's head), and the broker carries few queues.

Delivery-limit and dead-lettering are set explicitly, so 3.10 and the 3.13/4.x defaults agree.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel

from .catalog import exchange_of
from .envelope import SHARD_HEADER, SHARD_SLOTS

SERVICES = ("gateway", "processor", "scheduler", "notifier")

# A crash loop (the process dies on a message) ends after this many deliveries; handler errors
# never get here, they go through the retry queues and the dead-letter store first.
DELIVERY_LIMIT = 20

Handler = Callable[[Any, Any], Awaitable[Sequence[Any]]]


@dataclass(frozen=True)
class Subscription:
    queue: str  # "<service>.<purpose>"
    source: str  # the publishing exchange, e.g. "wabus.processor"
    keys: Sequence[str]
    handler: Handler
    prefetch: int = 32
    max_attempts: int = 5
    retry_base_s: float = 1.0
    retry_max_s: float = 300.0
    # One consumer at a time across replicas: keeps the queue's order.
    single_active: bool = False
    # Split by the events' shard key (a chat) over this many queues, each with one active consumer
    # whose deliveries are applied in arrival order: order per key holds with any number of replicas.
    shards: int = 0
    # Only events whose headers match one of these sets (all of a set's headers) reach the queue;
    # the rest are never delivered to it. Empty: every event the keys route.
    only: Sequence[Mapping[str, str]] = ()
    # The handler takes a list: the new events of a group (or one alone), in arrival order, and
    # returns one list of effects per event. It can write all of them with one statement.
    handles_many: bool = False


def retry_exchange(service: str, attempt: int) -> str:
    return f"wabus.{service}.retry.{attempt}"


def retry_queue(service: str, attempt: int) -> str:
    return f"{service}.retry.{attempt}"


def shard_queue(queue: str, shard: int) -> str:
    return f"{queue}.{shard}"


def shards_exchange(queue: str) -> str:
    return f"wabus.{queue}.shards"


def selection_exchange(queue: str) -> str:
    return f"wabus.{queue}.only"


def consumed_queues(sub: Subscription) -> list[str]:
    return [shard_queue(sub.queue, k) for k in range(sub.shards)] if sub.shards else [sub.queue]


def dead_exchange(service: str) -> str:
    return f"wabus.{service}.dead"


def dead_queue(service: str) -> str:
    return f"{service}.dead"


_QUORUM = {"x-queue-type": "quorum"}
# Quorum queues dead-letter at least once only with reject-publish overflow.
_SAFE_DEAD_LETTERING = {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}


def queue_arguments(service: str, sub: Subscription) -> dict[str, Any]:
    args = {
        **_QUORUM,
        "x-delivery-limit": DELIVERY_LIMIT,
        "x-dead-letter-exchange": dead_exchange(service),
        **_SAFE_DEAD_LETTERING,
    }
    if sub.single_active:
        args["x-single-active-consumer"] = True
    return args


def retry_queue_arguments() -> dict[str, Any]:
    # No dead-letter routing key: an expired delivery keeps the one it was published with, its queue.
    return {**_QUORUM, "x-dead-letter-exchange": "", **_SAFE_DEAD_LETTERING}


async def declare(channel: AbstractChannel, service: str, subscriptions: Sequence[Subscription]) -> None:
    """Declare everything `service` publishes to and consumes from; safe to repeat."""
    for name in SERVICES:
        await channel.declare_exchange(exchange_of(name), aio_pika.ExchangeType.TOPIC, durable=True)
    dead_x = await channel.declare_exchange(dead_exchange(service), aio_pika.ExchangeType.FANOUT, durable=True)
    dead_q = await channel.declare_queue(dead_queue(service), durable=True, arguments=dict(_QUORUM))
    await dead_q.bind(dead_x)

    for sub in subscriptions:
        if not sub.queue.startswith(f"{service}."):
            raise ValueError(f"queue {sub.queue!r} must be named '{service}.<purpose>'")
        source = await channel.declare_exchange(sub.source, aio_pika.ExchangeType.TOPIC, durable=True)
        if sub.shards:
            await _declare_shards(channel, service, sub, source)
        else:
            queue = await channel.declare_queue(sub.queue, durable=True, arguments=queue_arguments(service, sub))
            await _feed(channel, sub, source, queue)
    for attempt in range(1, max((sub.max_attempts for sub in subscriptions), default=1)):
        exchange = await channel.declare_exchange(retry_exchange(service, attempt), aio_pika.ExchangeType.FANOUT,
                                                  durable=True)
        queue = await channel.declare_queue(retry_queue(service, attempt), durable=True,
                                            arguments=retry_queue_arguments())
        await queue.bind(exchange)


async def _declare_shards(channel: AbstractChannel, service: str, sub: Subscription, source) -> None:
    """source --keys--> wabus.<queue>.shards (headers) --wabus-shard--> <queue>.<k>, one active consumer each."""
    router = await channel.declare_exchange(shards_exchange(sub.queue), aio_pika.ExchangeType.HEADERS, durable=True)
    await _feed(channel, sub, source, router)
    single = replace(sub, single_active=True)
    for k in range(sub.shards):
        queue = await channel.declare_queue(shard_queue(sub.queue, k), durable=True,
                                            arguments=queue_arguments(service, single))
        for slot in range(k, SHARD_SLOTS, sub.shards):
            await queue.bind(router, arguments={"x-match": "all", SHARD_HEADER: str(slot)})


async def _feed(channel: AbstractChannel, sub: Subscription, source, destination) -> None:
    """Bind `destination` (the queue, or its shards' exchange) to what `sub` takes from `source`."""
    if not sub.only:
        for key in sub.keys:
            await destination.bind(source, routing_key=key)
        return
    # A binding made before `only` was set still routes everything; it is left for the operator to
    # remove once every publisher sets the selectors (docs/runtime.md), so no event is lost meanwhile.
    selection = await channel.declare_exchange(selection_exchange(sub.queue), aio_pika.ExchangeType.HEADERS,
                                               durable=True)
    for key in sub.keys:
        await selection.bind(source, routing_key=key)
    for headers in sub.only:
        await destination.bind(selection, arguments={"x-match": "all", **headers})
