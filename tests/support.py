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

    def events(self) -> list[AbstractIncomingMessage]:
        """What arrived, once per event id in order of first arrival: delivery is at least once, and a
        publish whose confirm was lost goes out again under the same id."""
        first: dict[str | None, AbstractIncomingMessage] = {}
        for message in self.messages:
            first.setdefault(message.message_id, message)
        return list(first.values())

    async def wait_for_events(self, count: int, *, timeout: float = 15.0) -> list[AbstractIncomingMessage]:
        await eventually(lambda: _ready(len(self.events()) >= count), timeout=timeout, what=f"{count} events")
        return self.events()

    async def __aexit__(self, *exc: object) -> None:
        if self._connection is not None:
            await self._connection.close()


async def _ready(value: bool) -> bool:
    return value


class TcpProxy:
    """A loopback proxy in front of a real server: `cut()` drops every connection and refuses new ones,
    `restore()` serves again on the same port. Cuts one service off from the broker or the database
    without touching the server itself, which other tests and CI share."""

    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self.port: int | None = None
        self._server: asyncio.AbstractServer | None = None
        self._pipes: set[asyncio.Task] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port or 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, upstream_writer}
        for source, sink in ((reader, upstream_writer), (upstream_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            self._writers.discard(writer)

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        for task in list(self._pipes):
            task.cancel()

    async def restore(self) -> None:
        await self.start()

    async def close(self) -> None:
        await self.cut()
