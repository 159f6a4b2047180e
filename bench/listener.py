"""The MessageProcessed listener: a separate process, so its JSON decoding does not delay the sender.

It binds an exclusive queue to `wabus.processor` / `message.processed` and notes, for every message
of this run, when it arrived (time.perf_counter: CLOCK_MONOTONIC, the same clock in every process
of the machine, so it compares with the sender's send times). The parent talks to it over a pipe:
("count", phase) -> how many of that phase arrived; ("expect", ids) then ("missing",) -> how many of
those ids have not arrived yet; ("stop",) -> {message id: arrival time}.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import time
from collections import Counter
from multiprocessing.connection import Connection

import aiormq
import uvloop

EXCHANGE = "wabus.processor"
ROUTING_KEY = "message.processed"


def run(amqp_url: str, run_prefix: str, conn: Connection, lifetime_s: float) -> None:
    uvloop.run(_listen(amqp_url, run_prefix, conn, lifetime_s))


async def _listen(amqp_url: str, run_prefix: str, conn: Connection, lifetime_s: float) -> None:
    arrived: dict[str, float] = {}
    expected: set[str] = set()
    per_phase: Counter[str] = Counter()
    others = 0
    # aiormq rather than aio-pika: the listener shares the machine with what it measures, and aio-pika
    # wraps every delivery in an object of its own.
    connection = await asyncio.wait_for(aiormq.connect(amqp_url), timeout=10)
    try:
        channel = await connection.channel()
        await channel.basic_qos(prefetch_count=2000)
        declared = await channel.queue_declare("", exclusive=True, auto_delete=True, durable=False)
        await channel.queue_bind(declared.queue, EXCHANGE, routing_key=ROUTING_KEY)

        async def on_message(message: aiormq.abc.DeliveredMessage) -> None:
            nonlocal others
            at = time.perf_counter()
            pid = _provider_message_id(message.body)
            if pid.startswith(run_prefix) and pid not in arrived:
                arrived[pid] = at
                per_phase[pid[len(run_prefix)]] += 1
            else:
                others += 1

        await channel.basic_consume(declared.queue, on_message, no_ack=True)
        conn.send("ready")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + lifetime_s  # bounded even if the parent never says stop
        while loop.time() < deadline:
            request = await loop.run_in_executor(None, _poll, conn)  # returns within a second
            if request is None:
                continue
            if request[0] == "count":
                conn.send(per_phase[request[1]])
            elif request[0] == "expect":
                expected = set(request[1])
            elif request[0] == "missing":
                conn.send(sum(1 for message_id in expected if message_id not in arrived))
            elif request[0] == "stop":
                break
    finally:
        with contextlib.suppress(Exception):
            await connection.close()
    conn.send({"arrived": arrived, "others": others})


_ID_KEY = b'"provider_message_id":"'


def _provider_message_id(body: bytes) -> str:
    # The first such key is the message's own (the envelope's data starts with it): found without decoding
    # the whole body.
    start = body.find(_ID_KEY)
    if start >= 0:
        start += len(_ID_KEY)
        return body[start:body.index(b'"', start)].decode()
    return json.loads(body)["data"]["message"]["provider_message_id"]


def _poll(conn: Connection):
    if conn.poll(1.0):
        try:
            return conn.recv()
        except EOFError:
            return ("stop",)
    return None


class Listener:
    """The parent's handle on the listener process."""

    def __init__(self, amqp_url: str, run_prefix: str, lifetime_s: float):
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self.process = context.Process(target=run, args=(amqp_url, run_prefix, child, lifetime_s),
                                       name="bench-listener", daemon=True)
        self.process.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    async def ready(self, timeout_s: float = 30) -> None:
        if not await asyncio.to_thread(self._conn.poll, timeout_s):
            raise RuntimeError("listener did not bind its queue in time")
        message = self._conn.recv()
        if message != "ready":
            raise RuntimeError(f"listener: {message!r}")

    async def count(self, phase: str) -> int:
        self._conn.send(("count", phase))
        if not await asyncio.to_thread(self._conn.poll, 10):
            raise RuntimeError("listener did not answer")
        return self._conn.recv()

    async def missing(self, message_ids: list[str] | None = None) -> int:
        """How many of the expected ids have not arrived (pass the ids the first time)."""
        if message_ids is not None:
            self._conn.send(("expect", message_ids))
        self._conn.send(("missing",))
        if not await asyncio.to_thread(self._conn.poll, 10):
            raise RuntimeError("listener did not answer")
        return self._conn.recv()

    async def stop(self) -> dict:
        try:
            self._conn.send(("stop",))
            if await asyncio.to_thread(self._conn.poll, 30):
                return self._conn.recv()
            return {"arrived": {}, "others": 0}
        finally:
            await asyncio.to_thread(self.process.join, 10)
            if self.process.is_alive():
                self.process.kill()
                self.process.join(5)
