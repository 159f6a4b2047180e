"""Real-time fan-out to browsers: WebSocket (/v1/ws) and Server-Sent Events (/v1/stream).

The broker keeps what browsers may follow: `gateway.stream` is a RabbitMQ stream, an append-only
log bound to those events and kept for WABUS_GATEWAY_STREAM_RETENTION_H (at most
WABUS_GATEWAY_STREAM_MAX_BYTES). An event's offset in it is its id. Nothing reads the log while no
browser is connected, so an event costs the gateway nothing until someone follows.

Each gateway replica runs one hub. While it has clients, it follows the log from its end and hands
each event to the clients it is for: their tenant (from the API key), topic and department. A
client that reconnects with the last id it saw first reads the log from the id after it, until it
meets the events the hub hands it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import random
import re
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage, AbstractQueue
from aiohttp import WSMsgType, web
from prometheus_client import CollectorRegistry, Gauge
from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.events.auth import Role
from shared.events.http import problem
from shared.events.publisher import CHANNEL_GONE
from shared.events.runtime import API_KEYS

log = logging.getLogger(__name__)

STREAM_QUEUE = "gateway.stream"
FOLLOWED = {
    "wabus.processor": ("message.processed",),
    "wabus.scheduler": ("queue.opened", "queue.closed", "queue.status.changed", "ticket.issued", "turn.reached"),
    "wabus.notifier": ("notification.status", "broadcast.status"),
}
TOPICS = tuple(topic for topics in FOLLOWED.values() for topic in topics)
# Given, whatever the topics asked for, to a client whose last id is older than what the log still holds.
GAP_TOPIC = "stream.gap"
# Where older gateways kept these events on their way into PostgreSQL; nothing reads them now.
_RETIRED = ("gateway.stream.processor", "gateway.stream.scheduler", "gateway.stream.notifier")
# Retention drops whole segments: small ones let old events go close to on time.
SEGMENT_BYTES = 16_000_000

HEARTBEAT_S = 15.0
KEY_CHECK_S = 15.0  # how often an open stream's key is checked again: a revoked key loses its stream
CLIENT_BUFFER = 1000  # a client caught up and further behind than this is let go; it reconnects and catches up
FOLLOW_PREFETCH = 1000
REPLAY_PREFETCH = 500
RECENT_IDS = 1000
MAX_CATCH_UPS = 64  # each reads the log, every tenant's events, from its id on, on a channel of its own

_BROKER_ERRORS = (*CHANNEL_GONE, OSError, TimeoutError)

# Queue events reach waiting-room screens: the ticket number is enough, never whose it is.
_PRIVATE = ("patient", "subscribers")


async def declare_stream(connection: AbstractConnection, *, retention_h: float, max_bytes: int) -> None:
    """The log and its bindings; the queues of the old way go. Safe to repeat."""
    arguments = {"x-queue-type": "stream", "x-max-age": f"{max(1, round(retention_h * 3600))}s",
                 "x-max-length-bytes": max_bytes, "x-stream-max-segment-size-bytes": SEGMENT_BYTES}
    channels = [await connection.channel()]
    try:
        try:
            queue = await channels[0].declare_queue(STREAM_QUEUE, durable=True, arguments=arguments)
        except aio_pika.exceptions.ChannelPreconditionFailed:
            # A stream keeps the arguments it was made with; a policy changes them (docs/inbound.md).
            log.warning("gateway.stream keeps its earlier retention", extra={"wanted": arguments})
            channels.append(await connection.channel())
            queue = await channels[-1].declare_queue(STREAM_QUEUE, passive=True)
        for exchange, topics in FOLLOWED.items():
            for topic in topics:
                await queue.bind(exchange, topic)
        for name in _RETIRED:
            await channels[-1].queue_delete(name)
    finally:
        for channel in channels:
            with contextlib.suppress(Exception):
                await channel.close()


@dataclass
class Item:
    offset: int
    event_id: str
    tenant_id: str
    topic: str
    department: str | None
    event: dict

    @classmethod
    def gap(cls, tenant_id: str, first: int, last: int) -> Item:
        """The events from `first` to `last` are gone from the log; its id is the last of them."""
        return cls(last, f"gap:{first}-{last}", tenant_id, GAP_TOPIC, None,
                   {"missed_from": str(first), "missed_to": str(last)})

    @property
    def id(self) -> str:
        return str(self.offset)

    @functools.cached_property
    def body(self) -> str:
        # Only for an event someone is given: most of what a catch-up reads is other tenants'.
        return json.dumps(self.event, separators=(",", ":"))


def _item(message: AbstractIncomingMessage) -> Item | None:
    try:
        event = json.loads(message.body)
        data = event.get("data") or {}
        for name in _PRIVATE:
            data.pop(name, None)
        return Item(int(message.headers["x-stream-offset"]), event["id"], event["tenant_id"], event["type"],
                    data.get("department"), event)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        # Someone else's message on a followed key: skipped, or every browser would stumble on it for good.
        log.warning("stream message skipped: not an event", extra={"error": repr(exc)})
        return None


class Filter(BaseModel):
    model_config = ConfigDict(extra="ignore")
    topics: list[str] = Field(default_factory=lambda: list(TOPICS))
    department: str | None = None
    last_event_id: str | None = None

    @field_validator("topics", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        return [t for t in value.split(",") if t] if isinstance(value, str) else value

    @field_validator("topics")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(TOPICS))
        if unknown:
            raise ValueError(f"unknown topics {unknown}; known: {list(TOPICS)}")
        return value

    @field_validator("last_event_id")
    @classmethod
    def _offset(cls, value: str | None) -> str | None:
        if value is not None and _OLD_ID.fullmatch(value):
            # An id of the gateway before the log (`<xid>.<seq>`): a browser open across the upgrade
            # goes on from now rather than being refused, which would stop its EventSource for good.
            return None
        if value is not None:
            parse_id(value)
        return value

    def wants(self, item: Item) -> bool:
        return item.topic in self.topics and (self.department is None or item.department == self.department)


_OLD_ID = re.compile(r"[0-9]{1,20}\.[0-9]{1,20}")
_LARGEST_ID = 2**63 - 2  # the next offset must still be a signed 64-bit number


def parse_id(value: str) -> int:
    if not (value.isascii() and value.isdigit()) or int(value) > _LARGEST_ID:
        raise ValueError("not an event id this stream gave out")
    return int(value)


async def _next_of(queue: asyncio.Queue[Item], until: asyncio.Event, timeout: float) -> Item | None:
    """The queue's next item; None once `until` is set and the queue is empty; TimeoutError if quiet."""
    if not queue.empty():
        return queue.get_nowait()
    if until.is_set():
        return None
    getter = asyncio.ensure_future(queue.get())
    waiter = asyncio.ensure_future(until.wait())
    try:
        done, _ = await asyncio.wait({getter, waiter}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        getter.cancel()
        waiter.cancel()
    if getter in done:
        return getter.result()
    if waiter in done:
        return None
    raise TimeoutError


@dataclass(eq=False)
class Client:
    tenant_id: str
    filter: Filter
    queue: asyncio.Queue[Item] = field(default_factory=lambda: asyncio.Queue(CLIENT_BUFFER))
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    # The highest offset given to the browser: what the catch-up and the hub both hold is given once.
    given: int = -1
    # The catch-up: what the log holds after the client's last id, read before the hub's events.
    replayed: asyncio.Queue[Item] = field(default_factory=lambda: asyncio.Queue(REPLAY_PREFETCH))
    replay_done: asyncio.Event = field(default_factory=asyncio.Event)
    # Whether the catch-up reached the hub's events. A catch-up that ended short of them (the client let
    # go, the broker gone) must not be followed by them: the browser's last id would skip the gap between.
    caught_up: bool = False
    replay_next: int = 0
    replay: asyncio.Task | None = None
    live_from: int | None = None  # the first offset the hub handed out after the client joined
    # A relay that lost a confirm publishes the event again: the log holds it twice, the browser gets it once.
    recent: dict[str, None] = field(default_factory=dict)  # the last RECENT_IDS event ids given, oldest first

    def __post_init__(self) -> None:
        if self.filter.last_event_id is None:
            self.replay_done.set()
            self.caught_up = True
        else:
            self.given = parse_id(self.filter.last_event_id)
            self.replay_next = self.given + 1

    def wants(self, item: Item) -> bool:
        return item.tenant_id == self.tenant_id and self.filter.wants(item)

    def offer(self, item: Item) -> bool:
        try:
            self.queue.put_nowait(item)
            return True
        except asyncio.QueueFull:
            return False

    def met_the_hub(self, offset: int) -> None:
        """The hub's first event after the client joined: the catch-up need not go past it."""
        self.live_from = offset
        self.end_replay_if_met()

    def catch_up_to(self, item: Item) -> None:
        """Still catching up, and the hub's events for it fill its buffer: the catch-up reads on to here
        instead. Those events come after where the catch-up is, so it gives them in turn; cutting the
        client loose could leave it starting over from the same id for good."""
        while not self.queue.empty():
            self.queue.get_nowait()
        self.met_the_hub(item.offset)
        self.offer(item)

    def end_replay_if_met(self) -> None:
        # Else a catch-up waiting for an offset the log does not hold yet would hold back the hub's events.
        if self.live_from is not None and self.live_from <= self.replay_next and not self.caught_up:
            self.caught_up = True
            self.stop_replay()

    def stop_replay(self) -> None:
        # Said here too: a task cancelled before it ran never reaches its `finally`.
        self.replay_done.set()
        if self.replay is not None:
            self.replay.cancel()

    async def next(self, timeout: float) -> Item | None:
        """The next item; None once the hub let this client go and what it had is sent; TimeoutError if quiet."""
        while True:
            item = await _next_of(self.replayed, self.replay_done, timeout)
            if item is None:
                if not self.caught_up:
                    return None  # the browser reconnects from the last id it was given
                item = await _next_of(self.queue, self.closed, timeout)
            if item is None:
                return None
            if item.offset > self.given and item.event_id not in self.recent:
                self.given = item.offset
                self.recent[item.event_id] = None
                if len(self.recent) > RECENT_IDS:
                    del self.recent[next(iter(self.recent))]
                return item


class StreamUnavailable(Exception):
    pass


@dataclass(frozen=True)
class _Reader:
    """A consumer of the log on a channel of its own; `inbox` ends with None when the reading ends."""

    channel: AbstractChannel
    queue: AbstractQueue
    consumer_tag: str
    inbox: asyncio.Queue[AbstractIncomingMessage | None]

    async def close(self) -> None:
        # Cancelled first: RabbitMQ 3.10 goes on listing a stream consumer whose channel merely closed.
        with contextlib.suppress(Exception):
            await self.queue.cancel(self.consumer_tag)
        await self.channel.close()


class StreamHub:
    """One per gateway replica: follows the log while browsers are connected, offers each event to its clients."""

    def __init__(self, amqp_url: str, registry: CollectorRegistry, *, connect_timeout_s: float = 10.0):
        self._url, self._connect_timeout_s = amqp_url, connect_timeout_s
        self._connection: AbstractConnection | None = None
        self._connecting = asyncio.Lock()
        self._clients: set[Client] = set()
        self._following: asyncio.Task | None = None
        self._attaching = asyncio.Lock()
        self._readers: set[asyncio.Task] = set()
        self._catching_up = 0
        self._closing: set[asyncio.Future] = set()
        self._closer: asyncio.Task | None = None
        self._connected = Gauge("wabus_stream_clients", "Browsers connected to this gateway's WebSocket/SSE.",
                                ["service"], registry=registry)
        self._connected.labels("gateway").set(0)

    async def start(self, stopping: asyncio.Event) -> None:
        self._closer = asyncio.create_task(self._close_clients_on(stopping), name="stream-hub-closer")

    async def _close_clients_on(self, stopping: asyncio.Event) -> None:
        # The HTTP server waits for open streams before it stops: end them as soon as stopping begins.
        await stopping.wait()
        for client in list(self._clients):
            self._disconnect(client)

    async def stop(self) -> None:
        for client in list(self._clients):
            self._disconnect(client)
        tasks = [t for t in (self._closer, *self._readers) if t]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*self._closing, return_exceptions=True)
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._connection.close(), timeout=2)

    async def join(self, client: Client) -> None:
        """Register a client and have the log followed for it, from its last id on; else StreamUnavailable."""
        self._clients.add(client)
        self._connected.labels("gateway").set(len(self._clients))
        try:
            async with self._attaching:
                if self._following is None:
                    self._following = self._reading(self._follow, await self._open_reader("next"))
            if not client.replay_done.is_set():
                # Taken before the first await: clients coming back together after an outage all count.
                if self._catching_up >= MAX_CATCH_UPS:
                    raise StreamUnavailable("too many clients catching up at once")
                self._catching_up += 1
                try:
                    reader = await self._open_reader(client.replay_next)
                except BaseException:
                    self._catching_up -= 1
                    raise
                client.replay = self._reading(functools.partial(self._replay, client), reader, catch_up=True)
                if client.replay_done.is_set():  # the hub met it, or it went, while the log was being opened
                    client.replay.cancel()
        except _BROKER_ERRORS as exc:
            self._disconnect(client)
            log.warning("stream not opened: broker unavailable", extra={"error": str(exc) or type(exc).__name__})
            raise StreamUnavailable("the broker is unavailable") from exc
        except BaseException:
            self._disconnect(client)
            raise
        if client not in self._clients:  # it went while the log was being opened
            self.leave(client)

    def leave(self, client: Client) -> None:
        self._clients.discard(client)
        self._connected.labels("gateway").set(len(self._clients))
        client.stop_replay()
        if not self._clients and self._following is not None:
            # Nobody to hand events to: stop reading the log; the next client starts at its end.
            self._following.cancel()
            self._following = None

    def _disconnect(self, client: Client) -> None:
        """The client finishes what is queued, then meets the end marker."""
        self.leave(client)
        client.closed.set()

    async def _connect(self) -> AbstractConnection:
        async with self._connecting:
            if self._connection is None or not self._connection.connected.is_set():
                stale, self._connection = self._connection, None
                if stale is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(stale.close(), timeout=2)
                self._connection = await aio_pika.connect(
                    self._url, timeout=self._connect_timeout_s,
                    client_properties={"connection_name": "wabus-gateway-stream"})
            return self._connection

    async def _open_reader(self, offset: int | str) -> _Reader:
        try:
            return await self._try_open_reader(offset)
        except _BROKER_ERRORS:
            if self._connection is not None and self._connection.connected.is_set():
                raise
            # The connection was gone without having said so yet: once more, on a new one.
            return await self._try_open_reader(offset)

    async def _try_open_reader(self, offset: int | str) -> _Reader:
        async with asyncio.timeout(self._connect_timeout_s):
            channel = await (await self._connect()).channel()
            try:
                inbox: asyncio.Queue[AbstractIncomingMessage | None] = asyncio.Queue()
                # The reading ends when the channel closes (the broker gone, or closed here) or the broker
                # cancels the consumer (the log deleted). Consumed through a callback, not aio-pika's
                # iterator: that one nacks what it holds when stopped, and a stream answers a nack by
                # closing the whole connection.
                channel.close_callbacks.add(lambda *_: inbox.put_nowait(None))
                (await channel.get_underlay_channel()).on_consumer_cancel_callbacks.add(
                    lambda *_: inbox.put_nowait(None))
                # A stream is read only with a prefetch.
                await channel.set_qos(prefetch_count=FOLLOW_PREFETCH if offset == "next" else REPLAY_PREFETCH)
                queue = await channel.get_queue(STREAM_QUEUE, ensure=False)
                tag = await queue.consume(inbox.put, arguments={"x-stream-offset": offset})
            except BaseException:
                with contextlib.suppress(Exception):
                    await channel.close()
                raise
        return _Reader(channel, queue, tag, inbox)

    def _reading(self, work: Callable[[_Reader], Coroutine[Any, Any, None]], reader: _Reader, *,
                 catch_up: bool = False) -> asyncio.Task:
        task = asyncio.create_task(work(reader))
        self._readers.add(task)

        def ended(_: asyncio.Task) -> None:
            # However it ended (cancelled before it ran included), its channel closes, and its consumer with it.
            self._readers.discard(task)
            if catch_up:
                self._catching_up -= 1
            self._close_later(reader)

        task.add_done_callback(ended)
        return task

    def _close_later(self, reader: _Reader) -> None:
        def closed(closing: asyncio.Future) -> None:
            self._closing.discard(closing)
            if not closing.cancelled():
                closing.exception()  # retrieved: a channel that would not close is gone all the same

        closing = asyncio.ensure_future(asyncio.wait_for(reader.close(), timeout=2))
        self._closing.add(closing)
        closing.add_done_callback(closed)

    async def _follow(self, reader: _Reader) -> None:
        try:
            while (message := await reader.inbox.get()) is not None:
                item = _item(message)
                await message.ack()
                if item is not None:
                    self._hand_out(item)
            log.warning("stream hub stopped following: channel closed or consumer cancelled by the broker")
        except Exception as exc:  # noqa: BLE001 - whatever it was, the clients are told below
            log.warning("stream hub stopped following", extra={"error": str(exc) or type(exc).__name__})
        finally:
            if self._following is asyncio.current_task():
                # Its clients may miss what comes next: they reconnect with their last id and catch up.
                self._following = None
                for client in list(self._clients):
                    self._disconnect(client)

    def _hand_out(self, item: Item) -> None:
        for client in list(self._clients):
            if client.live_from is None:
                client.met_the_hub(item.offset)
            if client.wants(item) and not client.offer(item):
                if client.caught_up:
                    # Too far behind: cut it loose; it reconnects with its last id and catches up.
                    self._disconnect(client)
                else:
                    client.catch_up_to(item)

    async def _replay(self, client: Client, reader: _Reader) -> None:
        first = True
        try:
            while (message := await reader.inbox.get()) is not None:
                offset = int(message.headers["x-stream-offset"])
                if first and offset > client.replay_next:
                    # The log starts after the client's id: retention dropped what it missed. Said, not skipped.
                    await client.replayed.put(Item.gap(client.tenant_id, client.replay_next, offset - 1))
                first = False
                if client.live_from is not None and offset >= client.live_from:
                    client.caught_up = True
                    return
                item = _item(message)
                if item is not None and client.wants(item):
                    await client.replayed.put(item)
                await message.ack()
                client.replay_next = offset + 1
            log.warning("stream catch-up ended: channel closed or consumer cancelled by the broker")
            self._disconnect(client)
        except Exception as exc:  # noqa: BLE001 - the client reconnects with its last id
            log.warning("stream catch-up failed", extra={"error": str(exc) or type(exc).__name__})
            self._disconnect(client)
        finally:
            client.replay_done.set()


HUB = web.AppKey("stream_hub", StreamHub)


async def _open(request: web.Request) -> Client:
    principal = await request.app[API_KEYS].authenticate(request, Role.VIEWER)
    query = dict(request.query)
    last = request.headers.get("Last-Event-ID") or query.get("last_event_id")
    return Client(principal.tenant_id, Filter.model_validate({**query, "last_event_id": last}))


def _unavailable(exc: StreamUnavailable) -> web.Response:
    response = problem(503, "event stream unavailable", reason=str(exc))
    response.headers["Retry-After"] = "5"
    return response


async def _still_allowed(request: web.Request) -> bool:
    """Whether the stream's key still holds (checked through the keys' short cache)."""
    try:
        await request.app[API_KEYS].authenticate(request, Role.VIEWER)
    except (web.HTTPUnauthorized, web.HTTPForbidden):
        return False
    except Exception as exc:  # noqa: BLE001 - an unreachable database is no reason to cut a viewer off
        log.warning("stream key not checked again", extra={"error": str(exc)})
    return True


_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
SSE_RETRY_MS = 5000


async def sse(request: web.Request) -> web.StreamResponse:
    client = await _open(request)
    hub = request.app[HUB]
    try:
        await hub.join(client)
    except StreamUnavailable as exc:
        # Not a 503: an EventSource gives up for good on anything but a 200. This stream ends at once
        # and asks the browser back, with its last id, a little later.
        response = web.StreamResponse(headers=_SSE_HEADERS)
        await response.prepare(request)
        # Spread out: browsers cut off together should not all come back in the same instant.
        await response.write(f"retry: {random.randint(SSE_RETRY_MS, 2 * SSE_RETRY_MS)}\n: {exc}\n\n".encode())
        await response.write_eof()
        return response
    try:
        response = web.StreamResponse(headers=_SSE_HEADERS)
        await response.prepare(request)
        checked = beat = time.monotonic()
        while request.transport is not None and not request.transport.is_closing():  # else the browser left
            if time.monotonic() - checked >= KEY_CHECK_S:
                checked = time.monotonic()
                if not await _still_allowed(request):
                    break  # the browser reconnects, and then meets a 401
            try:
                item = await client.next(1.0)
            except TimeoutError:
                if time.monotonic() - beat >= HEARTBEAT_S:
                    beat = time.monotonic()
                    await response.write(b": heartbeat\n\n")
                continue
            if item is None:
                break
            await response.write(_sse_frame(item))
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        hub.leave(client)
    return response


def _sse_frame(item: Item) -> bytes:
    return f"id: {item.id}\nevent: {item.topic}\ndata: {item.body}\n\n".encode()


async def websocket(request: web.Request) -> web.WebSocketResponse:
    client = await _open(request)
    hub = request.app[HUB]
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT_S)
    if not ws.can_prepare(request).ok:
        raise web.HTTPBadRequest(reason="not a WebSocket request")
    try:
        await hub.join(client)
    except StreamUnavailable as exc:
        return _unavailable(exc)
    try:
        await ws.prepare(request)
        reader = asyncio.create_task(_drain_incoming(ws))
        checked = time.monotonic()
        while not ws.closed and not reader.done():
            if time.monotonic() - checked >= KEY_CHECK_S:
                checked = time.monotonic()
                if not await _still_allowed(request):
                    await ws.close(code=4001, message=b"API key revoked")
                    break
            try:
                item = await client.next(1.0)
            except TimeoutError:
                continue  # and look whether the client is still there
            if item is None:
                await ws.close(code=4000, message=b"fell behind or server stopping; reconnect with the last id")
                break
            await ws.send_str(_ws_frame(item))
        reader.cancel()
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        hub.leave(client)
        if ws.prepared and not ws.closed:
            await ws.close()
    return ws


async def _drain_incoming(ws: web.WebSocketResponse) -> None:
    # The stream is one-way; reading keeps pings answered and notices the client leaving.
    async for message in ws:
        if message.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
            return


def _ws_frame(item: Item) -> str:
    return json.dumps({"id": item.id, "topic": item.topic, "event": item.event})


routes = [web.get("/v1/stream", sse), web.get("/v1/ws", websocket)]
