"""Real-time fan-out to browsers: WebSocket (/v1/ws) and Server-Sent Events (/v1/stream).

Events reach `stream_events` through the gateway's durable `gateway.stream` subscription. Each
gateway replica runs one hub that reads new rows and hands them to its connected clients, filtered
by tenant (from the API key), topic and department. An id is `<xid>.<seq>`: a client that
reconnects with the last id it saw is first given every row after it, then the live stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import asyncpg
from aiohttp import WSMsgType, web
from prometheus_client import CollectorRegistry, Gauge
from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.events import db
from shared.events.auth import Role
from shared.events.envelope import Envelope
from shared.events.runtime import API_KEYS

log = logging.getLogger(__name__)

TOPICS = ("message.processed", "queue.opened", "queue.closed", "queue.status.changed", "ticket.issued",
          "turn.reached", "notification.status", "broadcast.status")
HEARTBEAT_S = 15.0
KEY_CHECK_S = 15.0  # how often an open stream's key is checked again: a revoked key loses its stream
CLIENT_BUFFER = 1000  # a client further behind than this is dropped; it reconnects and catches up
REPLAY_PAGE = 1000

Cursor = tuple[int, int]  # (xid, seq)

_RECORD = """
INSERT INTO stream_events (tenant_id, topic, department, event_id, body, occurred_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::uuid[], $5::text[], $6::timestamptz[])
ON CONFLICT (event_id) DO NOTHING
"""

# Only rows of transactions older than every one still running: none can appear before them later.
_FINAL = "e.xid < pg_snapshot_xmin(pg_current_snapshot())"

# Ordered by the table's own columns (`e.xid`, not the bigint output named `xid`): in the primary
# key's order, the rows come straight from its index instead of a sort of the whole table.
_NEWER = f"""
SELECT e.xid::text::bigint AS xid, e.seq, e.tenant_id, e.topic, e.department, e.body FROM stream_events e
WHERE (e.xid, e.seq) > ($1::text::xid8, $2) AND {_FINAL} ORDER BY e.xid, e.seq LIMIT $3
"""

_REPLAY = f"""
SELECT e.xid::text::bigint AS xid, e.seq, e.tenant_id, e.topic, e.department, e.body FROM stream_events e
WHERE e.tenant_id = $1 AND (e.xid, e.seq) > ($2::text::xid8, $3) AND (e.xid, e.seq) <= ($4::text::xid8, $5)
  AND {_FINAL} AND e.topic = ANY($6::text[]) AND ($7::text IS NULL OR e.department = $7)
ORDER BY e.tenant_id, e.xid, e.seq LIMIT $8
"""

_HORIZON = f"""
SELECT e.xid::text::bigint, e.seq FROM stream_events e WHERE {_FINAL} ORDER BY e.xid DESC, e.seq DESC LIMIT 1
"""

PRUNE_STREAM = "DELETE FROM stream_events WHERE occurred_at < $1"


# Queue events reach waiting-room screens: the ticket number is enough, never whose it is.
_PRIVATE = {"patient", "subscribers"}


async def record_stream_events(envelopes: list[Envelope], conn: asyncpg.Connection) -> list[list]:
    """Keep events for the browsers of their tenants (gateway.stream subscriptions), in arrival order."""
    await conn.execute(
        _RECORD, [e.tenant_id for e in envelopes], [e.type for e in envelopes],
        [getattr(e.data, "department", None) for e in envelopes], [e.id for e in envelopes],
        [e.model_dump_json(exclude={"data": _PRIVATE}) for e in envelopes], [e.occurred_at for e in envelopes],
    )
    return [[] for _ in envelopes]


@dataclass(frozen=True)
class Item:
    cursor: Cursor
    tenant_id: str
    topic: str
    department: str | None
    body: str

    @property
    def id(self) -> str:
        return f"{self.cursor[0]}.{self.cursor[1]}"


def _item(row: asyncpg.Record) -> Item:
    return Item((row["xid"], row["seq"]), row["tenant_id"], row["topic"], row["department"], row["body"])


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
    def _cursor(cls, value: str | None) -> str | None:
        if value is not None:
            parse_id(value)
        return value

    def wants(self, item: Item) -> bool:
        return item.topic in self.topics and (self.department is None or item.department == self.department)


_BIGINT_MAX = 2**63 - 1


def parse_id(value: str) -> Cursor:
    try:
        xid, seq = (int(part) for part in value.split("."))
    except ValueError:
        raise ValueError("not an event id this stream gave out") from None
    if not (0 <= xid <= _BIGINT_MAX and 0 <= seq <= _BIGINT_MAX):
        raise ValueError("not an event id this stream gave out")
    return xid, seq


@dataclass(eq=False)
class Client:
    tenant_id: str
    filter: Filter
    queue: asyncio.Queue[Item] = field(default_factory=lambda: asyncio.Queue(CLIENT_BUFFER))
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    def offer(self, item: Item) -> bool:
        try:
            self.queue.put_nowait(item)
            return True
        except asyncio.QueueFull:
            return False

    async def next(self, timeout: float) -> Item | None:
        """The next item; None once the hub let this client go and what it had is sent; TimeoutError if quiet."""
        if not self.queue.empty():
            return self.queue.get_nowait()
        if self.closed.is_set():
            return None
        getter = asyncio.ensure_future(self.queue.get())
        closer = asyncio.ensure_future(self.closed.wait())
        done, pending = await asyncio.wait({getter, closer}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        if getter in done:
            return getter.result()
        if closer in done:
            return None
        raise TimeoutError


class StreamHub:
    """One per gateway replica: reads what is new in stream_events and offers it to matching clients."""

    def __init__(self, pool: asyncpg.Pool, dsn: str, schema: str, registry: CollectorRegistry, *,
                 poll_interval_s: float = 1.0, connect_timeout_s: float = 10.0):
        self._pool, self._dsn, self._schema = pool, dsn, schema
        self._poll_interval_s, self._connect_timeout_s = poll_interval_s, connect_timeout_s
        self._clients: set[Client] = set()
        self._cursor: Cursor = (0, 0)
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closer: asyncio.Task | None = None
        self._listener: asyncpg.Connection | None = None
        self._connected = Gauge("wabus_stream_clients", "Browsers connected to this gateway's WebSocket/SSE.",
                                ["service"], registry=registry)

    async def start(self, stopping: asyncio.Event) -> None:
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(_HORIZON)
        self._cursor = (row[0], row[1]) if row else (0, 0)
        self._task = asyncio.create_task(self._run(), name="stream-hub")
        self._closer = asyncio.create_task(self._close_clients_on(stopping), name="stream-hub-closer")

    async def _close_clients_on(self, stopping: asyncio.Event) -> None:
        # The HTTP server waits for open streams before it stops: end them as soon as stopping begins.
        await stopping.wait()
        for client in list(self._clients):
            self._disconnect(client)

    async def stop(self) -> None:
        for task in (self._task, self._closer):
            if task:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for client in list(self._clients):
            self._disconnect(client)
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._listener.close(), timeout=2)

    def join(self, client: Client) -> Cursor:
        """Register a client; it gets every item after the returned cursor from the hub."""
        self._clients.add(client)
        self._connected.labels("gateway").set(len(self._clients))
        return self._cursor

    def leave(self, client: Client) -> None:
        self._clients.discard(client)
        self._connected.labels("gateway").set(len(self._clients))

    async def replay(self, client: Client, until: Cursor) -> AsyncIterator[list[Item]]:
        """What the client missed after its last id, up to where the hub took over, a page at a time."""
        if client.filter.last_event_id is None:
            return
        after = parse_id(client.filter.last_event_id)
        while True:
            async with self._pool.acquire() as conn:
                rows = await conn.fetch(_REPLAY, client.tenant_id, str(after[0]), after[1], str(until[0]), until[1],
                                        client.filter.topics, client.filter.department, REPLAY_PAGE)
            if rows:
                yield [_item(r) for r in rows]
            if len(rows) < REPLAY_PAGE:
                return
            after = (rows[-1]["xid"], rows[-1]["seq"])

    def _disconnect(self, client: Client) -> None:
        """The client finishes what is queued, then meets the end marker."""
        self.leave(client)
        client.closed.set()

    async def _run(self) -> None:
        while True:
            try:
                await self._listen()
                await self._dispatch_new()
            except (*db.CONNECTION_ERRORS, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
                log.warning("stream hub paused: database unavailable", extra={"error": str(exc)})
                self._listener = None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._poll_interval_s)
            self._wake.clear()

    async def _listen(self) -> None:
        if self._listener is None or self._listener.is_closed():
            self._listener = await db.connect(self._dsn, self._schema, timeout=self._connect_timeout_s)
            await self._listener.add_listener(f"{self._schema}.stream", lambda *_: self._wake.set())

    async def _dispatch_new(self) -> None:
        if not self._clients:
            # Nobody to hand rows to: step past them without reading them.
            async with self._pool.acquire() as conn:
                horizon = await conn.fetchrow(_HORIZON)
            if not self._clients:  # else one joined meanwhile, at the old cursor: it is owed what follows
                if horizon:
                    self._cursor = max(self._cursor, (horizon[0], horizon[1]))
                return
        while True:
            async with self._pool.acquire() as conn:
                rows = await conn.fetch(_NEWER, str(self._cursor[0]), self._cursor[1], 1000)
            for row in rows:
                item = _item(row)
                self._cursor = item.cursor
                for client in list(self._clients):
                    if client.tenant_id == item.tenant_id and client.filter.wants(item) and not client.offer(item):
                        # Too far behind: cut it loose; it reconnects with its last id and catches up.
                        self._disconnect(client)
            if len(rows) < 1000:
                return


HUB = web.AppKey("stream_hub", StreamHub)


async def _open(request: web.Request) -> Client:
    principal = await request.app[API_KEYS].authenticate(request, Role.VIEWER)
    query = dict(request.query)
    last = request.headers.get("Last-Event-ID") or query.get("last_event_id")
    return Client(principal.tenant_id, Filter.model_validate({**query, "last_event_id": last}))


async def _still_allowed(request: web.Request) -> bool:
    """Whether the stream's key still holds (checked through the keys' short cache)."""
    try:
        await request.app[API_KEYS].authenticate(request, Role.VIEWER)
    except (web.HTTPUnauthorized, web.HTTPForbidden):
        return False
    except Exception as exc:  # noqa: BLE001 - an unreachable database is no reason to cut a viewer off
        log.warning("stream key not checked again", extra={"error": str(exc)})
    return True


async def sse(request: web.Request) -> web.StreamResponse:
    client = await _open(request)
    hub = request.app[HUB]
    until = hub.join(client)  # before anything can fail: `finally` is what lets the client go
    try:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                               "X-Accel-Buffering": "no"})
        await response.prepare(request)
        async for page in hub.replay(client, until):
            for item in page:
                await response.write(_sse_frame(item))
        checked = beat = time.monotonic()
        while True:
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
    until = hub.join(client)  # before anything can fail: `finally` is what lets the client go
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT_S)
    try:
        await ws.prepare(request)
        async for page in hub.replay(client, until):
            for item in page:
                await ws.send_str(_ws_frame(item))
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
    return json.dumps({"id": item.id, "topic": item.topic, "event": json.loads(item.body)})


routes = [web.get("/v1/stream", sse), web.get("/v1/ws", websocket)]
