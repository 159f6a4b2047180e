"""The load generator: pre-signed WAHA webhooks, sent open-loop at a fixed rate or closed-loop.

Everything costly (JSON, HMAC-SHA512) is done before a phase starts. During it a request costs a
few byte joins and a write on a kept-alive connection: the generator shares the cores with what it
measures, so it speaks just enough HTTP/1.1 to send these requests and read their answers (status,
Content-Length, Connection): about half the CPU that aiohttp's client took for the same load.
Every loop is bounded by a request count and a deadline.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp

CHATS = 200
REQUEST_TIMEOUT_S = 10.0


@dataclass
class Batch:
    """Signed bodies for one phase; message i has the id f"{prefix}{i:08d}"."""

    prefix: str
    bodies: list[bytes]
    signatures: list[bytes]

    def __len__(self) -> int:
        return len(self.bodies)


def message_id(prefix: str, i: int) -> str:
    # WAHA ids are `{fromMe}_{chat}_{id}`: the bare id must not contain "_".
    return f"{prefix}{i:08d}"


def build_batch(prefix: str, count: int, secret: str) -> Batch:
    key = secret.encode()
    now_s = int(time.time())
    bodies, signatures = [], []
    for i in range(count):
        chat = f"2126000{i % CHATS:05d}@c.us"
        body = json.dumps({
            "event": "message", "session": "default", "engine": "WEBJS",
            "payload": {"id": f"false_{chat}_{message_id(prefix, i)}", "timestamp": now_s, "from": chat,
                        "to": "212500000000@c.us", "fromMe": False, "body": "hello", "hasMedia": False},
        }, separators=(",", ":")).encode()
        bodies.append(body)
        signatures.append(hmac.new(key, body, hashlib.sha512).hexdigest().encode())
    return Batch(prefix, bodies, signatures)


@dataclass
class Record:
    """Per request: when it was sent and answered (perf_counter seconds) and its HTTP status.

    status 0 means no answer (connection error or timeout; counted in `errors` by kind), and a
    200 whose body did not say `accepted: 1` is counted as an error too.
    """

    size: int
    sent: array = field(init=False)
    answered: array = field(init=False)
    status: array = field(init=False)
    accepted: array = field(init=False)
    errors: Counter = field(default_factory=Counter)
    used: int = 0  # how many of the batch's messages were sent

    def __post_init__(self) -> None:
        self.sent = array("d", bytes(8 * self.size))
        self.answered = array("d", bytes(8 * self.size))
        self.status = array("h", bytes(2 * self.size))
        self.accepted = array("b", bytes(self.size))


def new_session(limit: int) -> aiohttp.ClientSession:
    """For the odd request around the phases (readiness, metrics): not for the load."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, limit_per_host=limit),
        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
        cookie_jar=aiohttp.DummyCookieJar(),
    )


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection, one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._buffer = bytearray()
        self._answer: asyncio.Future[tuple[int, bytes, bool]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(exc or ConnectionResetError("server closed the connection"))

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0 or self._answer is None or self._answer.done():
            return
        head = bytes(self._buffer[:end]).lower()
        at = head.find(b"\r\ncontent-length:")
        if at < 0:
            self._answer.set_exception(ValueError("answer without Content-Length"))
            return
        line_end = head.find(b"\r\n", at + 2)
        length = int(head[at + 17:line_end if line_end > 0 else len(head)])
        if len(self._buffer) < end + 4 + length:
            return
        body = bytes(self._buffer[end + 4:end + 4 + length])
        del self._buffer[:end + 4 + length]
        self._answer.set_result((int(head[9:12]), body, b"\r\nconnection: close" not in head))

    async def exchange(self, request: bytes) -> tuple[int, bytes, bool]:
        """Status, body, and whether the connection may carry another request."""
        assert self.transport is not None
        self._answer = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self._answer

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Sender:
    """Up to `limit` kept-alive connections to one URL; a request beyond them waits for one."""

    def __init__(self, url: str, limit: int):
        parts = urlsplit(url)
        self._host, self._port = parts.hostname or "127.0.0.1", parts.port or 80
        self._head = (f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                      "Content-Type: application/json\r\nX-Webhook-Hmac-Algorithm: sha512\r\n").encode()
        self._slots = asyncio.Semaphore(limit)
        self._idle: list[_Connection] = []

    async def __aenter__(self) -> Sender:
        return self

    async def __aexit__(self, *_: object) -> None:
        for connection in self._idle:
            connection.close()
        self._idle.clear()

    def request(self, batch: Batch, i: int) -> bytes:
        body = batch.bodies[i]
        return b"".join((
            self._head, b"X-Webhook-Hmac: ", batch.signatures[i],
            b"\r\nX-Webhook-Timestamp: ", str(int(time.time() * 1000)).encode(),
            b"\r\nContent-Length: ", str(len(body)).encode(), b"\r\n\r\n", body,
        ))

    async def post(self, request: bytes) -> tuple[int, bytes]:
        connection = None
        try:
            # Like a client's total timeout: waiting for a free connection counts too.
            async with asyncio.timeout(REQUEST_TIMEOUT_S), self._slots:
                while self._idle and connection is None:
                    candidate = self._idle.pop()
                    connection = None if candidate.closed else candidate
                if connection is None:
                    _, connection = await asyncio.get_running_loop().create_connection(
                        _Connection, self._host, self._port)
                status, body, reusable = await connection.exchange(request)
        except BaseException:
            if connection is not None:
                connection.close()  # an answer may still be on its way: never reuse it
            raise
        if reusable and not connection.closed:
            self._idle.append(connection)
        else:
            connection.close()
        return status, body


async def post_one(sender: Sender, batch: Batch, record: Record, i: int) -> None:
    request = sender.request(batch, i)
    record.sent[i] = time.perf_counter()
    try:
        status, data = await sender.post(request)
        record.answered[i] = time.perf_counter()
        record.status[i] = status
        if status == 200 and json.loads(data).get("accepted") == 1:
            record.accepted[i] = 1
        else:
            record.errors[f"http {status}: {data[:120].decode(errors='replace')}"] += 1
    except (OSError, TimeoutError, ValueError) as exc:
        record.answered[i] = time.perf_counter()
        record.errors[type(exc).__name__] += 1


async def fixed_rate(sender: Sender, batch: Batch, rate: float, duration_s: float
                     ) -> tuple[Record, float, list[float]]:
    """Open loop: request i is due at start + i/rate whatever happened to earlier ones.

    Returns the record, the start time, and how late each request left against its schedule
    (the generator's own lag, reported so a slow generator is visible rather than hidden).
    """
    count = min(len(batch), int(rate * duration_s))
    record = Record(len(batch))
    in_flight: set[asyncio.Task] = set()
    lateness = array("d", bytes(8 * count))
    start = time.perf_counter() + 0.01
    i = 0
    while i < count:
        due = min(count, int((time.perf_counter() - start) * rate) + 1)
        while i < due:
            lateness[i] = time.perf_counter() - (start + i / rate)
            task = asyncio.create_task(post_one(sender, batch, record, i))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            i += 1
        delay = start + i / rate - time.perf_counter()
        await asyncio.sleep(max(0.0, delay))
    record.used = count
    if in_flight:  # each request has its own timeout; this bound is a second guard
        await asyncio.wait(in_flight, timeout=REQUEST_TIMEOUT_S + 5)
    return record, start, list(lateness)


async def closed_loop(sender: Sender, batch: Batch, concurrency: int, duration_s: float
                      ) -> tuple[Record, float]:
    """N posters, each posting the next message as soon as its previous one is answered."""
    record = Record(len(batch))
    next_index = 0
    start = time.perf_counter()
    deadline = start + duration_s

    async def poster() -> None:
        nonlocal next_index
        while next_index < len(batch) and time.perf_counter() < deadline:
            i = next_index
            next_index += 1
            await post_one(sender, batch, record, i)

    await asyncio.gather(*(poster() for _ in range(concurrency)))
    record.used = next_index
    return record, start


async def trickle(sender: Sender, batch: Batch, *, pause_s: float = 0.01) -> Record:
    """Warm-up: every message of a small batch, one at a time."""
    record = Record(len(batch))
    for i in range(len(batch)):
        await post_one(sender, batch, record, i)
        await asyncio.sleep(pause_s)
    record.used = len(batch)
    return record
