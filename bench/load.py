"""The load generator: pre-signed WAHA webhooks, sent open-loop at a fixed rate or closed-loop.

Everything costly (JSON, HMAC-SHA512) is done before a phase starts; during it a request costs one
header dict and one aiohttp POST. Every loop is bounded by a request count and a deadline.
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

import aiohttp

CHATS = 200
REQUEST_TIMEOUT_S = 10.0


@dataclass
class Batch:
    """Signed bodies for one phase; message i has the id f"{prefix}{i:08d}"."""

    prefix: str
    bodies: list[bytes]
    signatures: list[str]

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
        signatures.append(hmac.new(key, body, hashlib.sha512).hexdigest())
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
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, limit_per_host=limit),
        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
        cookie_jar=aiohttp.DummyCookieJar(),
    )


async def post_one(session: aiohttp.ClientSession, url: str, batch: Batch, record: Record, i: int) -> None:
    headers = {
        "Content-Type": "application/json",
        "X-Webhook-Hmac": batch.signatures[i],
        "X-Webhook-Hmac-Algorithm": "sha512",
        "X-Webhook-Timestamp": str(int(time.time() * 1000)),
    }
    record.sent[i] = time.perf_counter()
    try:
        async with session.post(url, data=batch.bodies[i], headers=headers) as response:
            data = await response.read()
            record.answered[i] = time.perf_counter()
            record.status[i] = response.status
            if response.status == 200 and json.loads(data).get("accepted") == 1:
                record.accepted[i] = 1
            else:
                record.errors[f"http {response.status}: {data[:120].decode(errors='replace')}"] += 1
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        record.answered[i] = time.perf_counter()
        record.errors[type(exc).__name__] += 1


async def fixed_rate(session: aiohttp.ClientSession, url: str, batch: Batch, rate: float, duration_s: float
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
            task = asyncio.create_task(post_one(session, url, batch, record, i))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            i += 1
        delay = start + i / rate - time.perf_counter()
        await asyncio.sleep(max(0.0, delay))
    record.used = count
    if in_flight:  # each request has its own timeout; this bound is a second guard
        await asyncio.wait(in_flight, timeout=REQUEST_TIMEOUT_S + 5)
    return record, start, list(lateness)


async def closed_loop(session: aiohttp.ClientSession, url: str, batch: Batch, concurrency: int, duration_s: float
                      ) -> tuple[Record, float]:
    """N senders, each posting the next message as soon as its previous one is answered."""
    record = Record(len(batch))
    next_index = 0
    start = time.perf_counter()
    deadline = start + duration_s

    async def sender() -> None:
        nonlocal next_index
        while next_index < len(batch) and time.perf_counter() < deadline:
            i = next_index
            next_index += 1
            await post_one(session, url, batch, record, i)

    await asyncio.gather(*(sender() for _ in range(concurrency)))
    record.used = next_index
    return record, start


async def trickle(session: aiohttp.ClientSession, url: str, batch: Batch, *, pause_s: float = 0.01) -> Record:
    """Warm-up: every message of a small batch, one at a time."""
    record = Record(len(batch))
    for i in range(len(batch)):
        await post_one(session, url, batch, record, i)
        await asyncio.sleep(pause_s)
    record.used = len(batch)
    return record
