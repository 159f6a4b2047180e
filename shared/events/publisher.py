"""Publishing with confirms: a publish returns only once the broker has taken the message."""

from __future__ import annotations

import asyncio
import copy
import functools
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiormq
from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from aiormq.abc import ChannelFrame
from pamqp import commands as spec
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from .catalog import route_of
from .envelope import Envelope
from .errors import PublishFailed
from .metrics import Metrics

# What a publish, an ack, a nack or a cancel raises when its channel or connection has gone.
CHANNEL_GONE = (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message as it goes on the wire: its body and its AMQP properties."""

    body: bytes
    properties: aiormq.spec.Basic.Properties


def build_message(
    *,
    body: bytes,
    event_id: str,
    event_type: str,
    correlation_id: str | None,
    occurred_at: datetime | None,
    headers: Mapping[str, Any] | None = None,
    expiration_s: float | None = None,
) -> Outgoing:
    # AMQP properties mirror the envelope (DESIGN.md, Events). Built directly rather than through
    # aio_pika.Message and Exchange.publish, which add about a third to the CPU of a publish, and
    # every event is published at least once.
    return Outgoing(body, aiormq.spec.Basic.Properties(
        message_id=event_id,
        message_type=event_type,
        correlation_id=correlation_id,
        content_type="application/json",
        delivery_mode=2,  # persistent
        timestamp=occurred_at,
        headers=dict(headers or {}),
        expiration=None if expiration_s is None else str(int(expiration_s * 1000)),
    ))


class Publisher:
    """One confirming channel; every publish has a deadline and is mandatory."""

    def __init__(self, channel: AbstractChannel, *, service: str, timeout_s: float, metrics: Metrics):
        self._channel = channel
        self._service = service
        self._timeout_s = timeout_s
        self._metrics = metrics

    @classmethod
    async def open(cls, connection: AbstractRobustConnection, *, service: str, timeout_s: float,
                   metrics: Metrics) -> Publisher:
        # on_return_raises: an unroutable event is an error, never a silent drop.
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        return cls(channel, service=service, timeout_s=timeout_s, metrics=metrics)

    async def publish(self, envelope: Envelope) -> None:
        route = route_of(envelope.type, envelope.version)
        message = build_message(
            body=envelope.encode(), event_id=str(envelope.id), event_type=envelope.type,
            correlation_id=envelope.correlation_id, occurred_at=envelope.occurred_at, headers=envelope.headers(),
        )
        await self.send(route.exchange, route.routing_key, message)

    async def send(self, exchange: str, routing_key: str, message: Outgoing) -> None:
        """Publish and wait for the broker's confirm, or raise PublishFailed."""
        [failure] = await self.send_many([(exchange, routing_key, message)])
        if failure is not None:
            raise failure

    async def send_many(self, messages: Sequence[tuple[str, str, Outgoing]]) -> list[PublishFailed | None]:
        """Publish (exchange, routing key, message) triples in one socket write and wait for their confirms.

        Returns, in order, None for each message the broker confirmed and the PublishFailed of each it did not.
        """
        if not messages:
            return []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout_s
        try:
            async with asyncio.timeout_at(deadline):
                channel = await self._channel.get_underlay_channel()
                confirmations, written = await _write(channel, messages)
                await written  # a socket that takes no more holds the publisher back
        except TimeoutError:
            return [self._failed("timeout", f"no confirm within {self._timeout_s}s for {key}")
                    for _, key, _ in messages]
        except CHANNEL_GONE as exc:
            return [self._failed("connection", f"broker unavailable: {exc!r}") for _ in messages]
        _, pending = await asyncio.wait(confirmations, timeout=max(0.0, deadline - loop.time()))
        for confirmation in pending:
            confirmation.cancel()
        return [self._outcome(confirmation, exchange, key, message)
                for confirmation, (exchange, key, message) in zip(confirmations, messages, strict=True)]

    def _outcome(self, confirmation: asyncio.Future, exchange: str, routing_key: str,
                 message: Outgoing) -> PublishFailed | None:
        if confirmation.cancelled():
            return self._failed("timeout", f"no confirm within {self._timeout_s}s for {routing_key}")
        exc = confirmation.exception()
        if exc is None:
            self._metrics.published.labels(self._service, message.properties.message_type or "").inc()
            return None
        if isinstance(exc, aiormq.exceptions.PublishError):
            return self._failed("unroutable", f"unroutable: no queue bound to {exchange or '(default)'} {routing_key}")
        if isinstance(exc, aiormq.exceptions.DeliveryError):
            return self._failed("nack", f"broker refused {routing_key}")
        # Anything else a confirmation holds is why its channel closed.
        return self._failed("connection", f"broker unavailable: {exc!r}")

    def _failed(self, reason: str, description: str) -> PublishFailed:
        self._metrics.publish_failures.labels(self._service, reason).inc()
        return PublishFailed(description, reason=reason)


async def _write(channel: aiormq.Channel, messages: Sequence[tuple[str, str, Outgoing]]
                 ) -> tuple[list[asyncio.Future], asyncio.Future]:
    """Queue the messages as one frame write and register a confirmation for each; the second future is done
    once the write is on the socket.

    aiormq's basic_publish writes every message on its own, and on loopback each socket write costs about what
    the rest of a publish does. This does what it does for the pinned aiormq (delivery tags, confirmations,
    message ids for returns), for many messages at once.
    """
    frames: list[Any] = []
    headers: list[ContentHeader] = []
    for exchange, routing_key, message in messages:
        if len(routing_key) > 255:
            raise ValueError(f"routing key too long (max 255 bytes): {routing_key[:40]}…")
        body = message.body
        properties = message.properties
        if not properties.message_id:
            # A returned message is matched to its publish by id: without one, it would count as confirmed.
            properties = copy.copy(properties)
            properties.message_id = uuid.uuid4().hex
        headers.append(ContentHeader(body_size=len(body), properties=properties))
        frames.append(spec.Basic.Publish(exchange=exchange, routing_key=routing_key, mandatory=True))
        frames.append(headers[-1])
        size = channel.max_content_size
        frames.extend(ContentBody(body[start:start + size]) for start in range(0, len(body), size))
    written = channel.create_future()
    async with channel.lock:
        await channel.write_queue.put(ChannelFrame.marshall(channel_number=channel.number, frames=frames,
                                                            drain_future=written))
        # The broker numbers publishes on a channel from 1; no confirm can arrive before the write above runs,
        # and nothing is awaited between here and the registrations.
        first = channel.delivery_tag + 1
        channel.delivery_tag += len(messages)
        confirmations = []
        for tag, header in zip(range(first, first + len(messages)), headers, strict=True):
            confirmation = channel.create_future()
            channel.confirmations[tag] = confirmation
            message_id = header.properties.message_id
            channel.message_id_delivery_tag[message_id] = tag  # a returned message names its id, not its tag
            confirmation.add_done_callback(functools.partial(_forget, channel, message_id, tag))
            confirmations.append(confirmation)
    return confirmations, written


def _forget(channel: aiormq.Channel, message_id: str, tag: int, _: asyncio.Future) -> None:
    if channel.message_id_delivery_tag.get(message_id) == tag:
        del channel.message_id_delivery_tag[message_id]
