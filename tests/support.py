"""Small helpers tests share: waiting on a condition, and listening as an outside client would."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import aio_pika
from aio_pika.abc import AbstractIncomingMessage


async def eventually(check: Callable[[], Awaitable[object]], *, timeout: float = 15.0, interval: float = 0.05,
                     what: str = "condition"):
    """Poll until `check` returns something truthy; fail with the last value after the deadline."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"{what} not reached within {timeout}s (last: {last!r})")


class Listener:
    """An exclusive queue bound to an exchange, collecting what arrives."""

    def __init__(self, url: str, exchange: str, keys: list[str]):
        self._url, self._exchange, self._keys = url, exchange, keys
        self.messages: list[AbstractIncomingMessage] = []
        self._connection: aio_pika.abc.AbstractConnection | None = None

    async def __aenter__(self) -> Listener:
        self._connection = await aio_pika.connect(self._url, timeout=10)
        channel = await self._connection.channel()
        exchange = await channel.declare_exchange(self._exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(exclusive=True)
        for key in self._keys:
            await queue.bind(exchange, routing_key=key)
        await queue.consume(self._received, no_ack=True)
        return self

    async def _received(self, message: AbstractIncomingMessage) -> None:
        self.messages.append(message)

    async def wait_for(self, count: int, *, timeout: float = 15.0) -> list[AbstractIncomingMessage]:
        await eventually(lambda: _ready(len(self.messages) >= count), timeout=timeout, what=f"{count} messages")
        return self.messages

    async def __aexit__(self, *exc: object) -> None:
        if self._connection is not None:
            await self._connection.close()


async def _ready(value: bool) -> bool:
    return value
