"""Consuming with an inbox: each event is applied once, retried with backoff, or dead-lettered."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue, AbstractRobustConnection

from . import db, outbox
from .batching import GroupCommit
from .catalog import decode
from .envelope import Envelope
from .errors import DatabaseUnavailable, InvalidEvent, PermanentFailure, PublishFailed
from .logs import log_context
from .metrics import Metrics
from .publisher import CHANNEL_GONE, Publisher, build_message
from .topology import Subscription, consumed_queues, retry_exchange

log = logging.getLogger(__name__)

ATTEMPT_HEADER = "x-wabus-attempt"
HISTORY_HEADER = "x-wabus-history"
_ERROR_LIMIT = 2000

_INSERT_INBOX = """
INSERT INTO inbox (consumer, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING true
"""

_INSERT_INBOX_ALL = """
INSERT INTO inbox (consumer, event_id) SELECT $1, unnest($2::uuid[]) ON CONFLICT DO NOTHING RETURNING event_id
"""

_INSERT_FAILED = """
INSERT INTO failed_events (subscription, event_id, event_type, tenant_id, body, headers, reason, attempts, history,
                           requeue_exchange, requeue_routing_key)
VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8, $9::jsonb, $10, $11)
RETURNING id
"""


def backoff_s(attempt: int, *, base_s: float, max_s: float, rng: random.Random | None = None) -> float:
    """Delay before the attempt after `attempt`: exponential, capped, with jitter in [½, 1]."""
    ceiling = min(max_s, base_s * 2 ** (attempt - 1))
    return ceiling * (0.5 + 0.5 * (rng or random).random())


def attempt_of(message: AbstractIncomingMessage) -> int:
    value = (message.headers or {}).get(ATTEMPT_HEADER, 1)
    try:
        return max(1, int(value))
    except (TypeError, ValueError):
        return 1


def history_of(message: AbstractIncomingMessage) -> list[dict[str, Any]]:
    raw = (message.headers or {}).get(HISTORY_HEADER)
    if isinstance(raw, bytes):
        raw = raw.decode(errors="replace")
    try:
        history = json.loads(raw) if raw else []
    except ValueError:
        return []
    return history if isinstance(history, list) else []


def _json_safe_headers(message: AbstractIncomingMessage) -> str:
    return json.dumps(message.headers or {}, default=str)


async def store_failed(
    pool: asyncpg.Pool,
    *,
    subscription: str,
    message: AbstractIncomingMessage,
    envelope: Envelope | None,
    reason: str,
    attempts: int,
    history: list[dict[str, Any]],
    requeue: tuple[str, str],
) -> int:
    async with db.transaction(pool) as conn:
        return await conn.fetchval(
            _INSERT_FAILED,
            subscription,
            str(envelope.id) if envelope else message.message_id,
            envelope.type if envelope else message.type,
            envelope.tenant_id if envelope else None,
            message.body,
            _json_safe_headers(message),
            reason[:_ERROR_LIMIT],
            attempts,
            json.dumps(history),
            *requeue,
        )


@dataclass
class EventConsumer:
    """Applies one subscription's events: inbox row, handler effects and caused events commit together."""

    service: str
    subscription: Subscription
    pool: asyncpg.Pool
    publisher: Publisher
    make_uow: Callable[[asyncpg.Connection], Any]
    metrics: Metrics
    unavailable_backoff_s: float
    stopping: asyncio.Event
    # Deliveries in flight together, from all of the subscription's queues (its shards), share one
    # transaction. One worker applies the groups, each in arrival order: every shard's order holds.
    together: bool = False
    _group: GroupCommit[Envelope, str | Exception] | None = field(default=None, init=False)

    def start(self) -> None:
        if self.together:
            max_batch = self.subscription.prefetch * len(consumed_queues(self.subscription))
            self._group = GroupCommit(self.pool, self._apply_group, max_batch=max_batch,
                                      outage_backoff_s=self.unavailable_backoff_s, stopping=self.stopping)
            self._group.start()

    async def stop(self) -> None:
        """After the queue's worker has stopped: nothing waits on the group any more."""
        if self._group is not None:
            await self._group.stop()

    async def process(self, message: AbstractIncomingMessage, queue: str) -> bool:
        """Settle one delivery from `queue` (the subscription's, or one of its shards); False leaves it
        unacked, to be redelivered."""
        sub = self.subscription
        attempt = attempt_of(message)
        try:
            envelope = decode(message.body)
        except InvalidEvent as exc:
            return await self._dead_letter(message, queue, None, f"invalid event: {exc}", attempt, event="invalid")

        with _logged_as(envelope):
            started = time.perf_counter()
            try:
                outcome = await self._until_database(lambda: self._apply(envelope))
            except _Stopping:
                return False
            except PermanentFailure as exc:
                return await self._dead_letter(message, queue, envelope, f"{type(exc).__name__}: {exc}", attempt)
            except Exception as exc:  # noqa: BLE001 - any handler error is retried, then dead-lettered
                return await self._retry(message, queue, envelope, exc, attempt)
            self.metrics.handler_duration.labels(self.service, sub.queue, envelope.type).observe(
                time.perf_counter() - started
            )
            self.metrics.consumed.labels(self.service, sub.queue, envelope.type, outcome).inc()
            if outcome == "duplicate":
                log.info("duplicate event skipped", extra={"subscription": sub.queue, "event": envelope.type})
            return True

    async def _apply(self, envelope: Envelope) -> str:
        if self._group is None:
            return await self._apply_alone(envelope)
        (outcome,) = await self._group.submit([envelope])
        if isinstance(outcome, Exception):
            raise outcome  # this event's own failure: retried as if it had been alone
        return outcome

    async def _apply_group(self, conn: asyncpg.Connection, envelopes: list[Envelope]) -> list[str | Exception]:
        """The group in one transaction. If a handler fails, the group is undone and applied again one
        event at a time, each in a savepoint, in the same order and before the next group: the failure
        stays with its own event, and the others commit without it."""
        self.metrics.group_size.labels(self.service, self.subscription.queue).observe(len(envelopes))
        try:
            async with conn.transaction():
                return await self._apply_all(conn, envelopes)
        except _FailedInGroup as failed:
            failure = failed
        outcomes: list[str | Exception] = []
        for envelope in envelopes:
            if envelope.id == failure.event_id:
                outcomes.append(failure.cause)  # not run again: its own attempt has failed
                continue
            with _logged_as(envelope):
                try:
                    async with conn.transaction():
                        outcomes.append(await self._apply_one(conn, envelope))
                except (DatabaseUnavailable, *db.CONNECTION_ERRORS):
                    raise
                except Exception as exc:  # noqa: BLE001 - handed to this event's own retry path
                    outcomes.append(exc)
        return outcomes

    async def _apply_all(self, conn: asyncpg.Connection, envelopes: list[Envelope]) -> list[str]:
        """The group's events, in arrival order; any failure undoes them all."""
        fresh = {r["event_id"] for r in await conn.fetch(_INSERT_INBOX_ALL, self.subscription.queue,
                                                          [e.id for e in envelopes])}
        outcomes, new = [], []
        for envelope in envelopes:
            if envelope.id in fresh:
                fresh.discard(envelope.id)  # the same event twice in one group: the second is a duplicate
                new.append(envelope)
                outcomes.append("applied")
            else:
                outcomes.append("duplicate")
        if self.subscription.handles_many:
            with _failing_as(None):  # which of the events failed is not known: each is tried alone
                effects = await self.subscription.handler(new, self.make_uow(conn))
        else:
            effects = []
            for envelope in new:
                with _logged_as(envelope), _failing_as(envelope.id):
                    effects.append(await self.subscription.handler(envelope, self.make_uow(conn)))
        await outbox.add(conn, [c for envelope, e in zip(new, effects, strict=True) for c in _as_caused(envelope, e)])
        return outcomes

    async def _apply_alone(self, envelope: Envelope) -> str:
        async with db.transaction(self.pool) as conn:
            return await self._apply_one(conn, envelope)

    async def _apply_one(self, conn: asyncpg.Connection, envelope: Envelope) -> str:
        first_time = await conn.fetchval(_INSERT_INBOX, self.subscription.queue, envelope.id)
        if not first_time:
            return "duplicate"  # redelivery; the effect is already committed
        if self.subscription.handles_many:
            (caused,) = await self.subscription.handler([envelope], self.make_uow(conn))
        else:
            caused = await self.subscription.handler(envelope, self.make_uow(conn))
        await outbox.add(conn, _as_caused(envelope, caused))
        return "applied"

    async def _until_database(self, work: Callable[[], Awaitable[Any]]) -> Any:
        return await until_database(work, stopping=self.stopping, backoff_s=self.unavailable_backoff_s,
                                    metrics=self.metrics, service=self.service)

    async def _retry(self, message: AbstractIncomingMessage, queue: str, envelope: Envelope, exc: Exception,
                     attempt: int) -> bool:
        sub = self.subscription
        history = [*history_of(message), _failure(attempt, exc)]
        if attempt >= sub.max_attempts:
            return await self._dead_letter(
                message, queue, envelope, f"gave up after {attempt} attempts: {_describe(exc)}", attempt,
                history=history,
            )
        delay = backoff_s(attempt, base_s=sub.retry_base_s, max_s=sub.retry_max_s)
        retry = build_message(
            body=message.body, event_id=str(envelope.id), event_type=envelope.type,
            correlation_id=envelope.correlation_id, occurred_at=envelope.occurred_at,
            headers={**(message.headers or {}), ATTEMPT_HEADER: attempt + 1, HISTORY_HEADER: json.dumps(history)},
            expiration_s=delay,
        )
        try:
            # Routed by the queue it came from: on expiry it goes straight back there (topology.py).
            await self.publisher.send(retry_exchange(self.service, attempt), queue, retry)
        except PublishFailed as publish_exc:
            log.warning("retry not scheduled; delivery left for redelivery", extra={"error": str(publish_exc)})
            return False
        self.metrics.retries.labels(self.service, sub.queue, envelope.type).inc()
        self.metrics.consumed.labels(self.service, sub.queue, envelope.type, "retried").inc()
        log.warning(
            "handler failed; retry scheduled",
            extra={"subscription": sub.queue, "attempt": attempt, "delay_s": round(delay, 3), "error": _describe(exc)},
        )
        return True

    async def _dead_letter(self, message: AbstractIncomingMessage, queue: str, envelope: Envelope | None, reason: str,
                           attempt: int, *, history: list[dict[str, Any]] | None = None,
                           event: str | None = None) -> bool:
        sub = self.subscription
        try:
            failed_id = await self._until_database(lambda: store_failed(
                self.pool, subscription=sub.queue, message=message, envelope=envelope, reason=reason,
                attempts=attempt, history=history if history is not None else history_of(message),
                requeue=("", queue),
            ))
        except _Stopping:
            return False
        event_type = event or (envelope.type if envelope else "unknown")
        kind = "invalid" if envelope is None else ("exhausted" if history else "permanent")
        self.metrics.dead_letters.labels(self.service, sub.queue, kind).inc()
        self.metrics.consumed.labels(self.service, sub.queue, event_type, "dead_lettered").inc()
        log.error("event dead-lettered", extra={"subscription": sub.queue, "failed_id": failed_id, "reason": reason})
        return True


@dataclass
class DeadLetterCollector:
    """Stores what the broker dead-lettered by itself (a crash loop hit the delivery limit)."""

    service: str
    pool: asyncpg.Pool
    metrics: Metrics
    unavailable_backoff_s: float
    stopping: asyncio.Event

    async def process(self, message: AbstractIncomingMessage) -> bool:
        queue, reason = _last_death(message.headers or {})
        envelope = None
        try:
            envelope = decode(message.body)
        except InvalidEvent:
            pass
        try:
            await until_database(
                lambda: store_failed(
                    self.pool, subscription=queue, message=message, envelope=envelope,
                    reason=f"broker dead-lettered: {reason}", attempts=attempt_of(message),
                    history=history_of(message), requeue=("", queue),
                ),
                stopping=self.stopping, backoff_s=self.unavailable_backoff_s, metrics=self.metrics,
                service=self.service,
            )
        except _Stopping:
            return False
        self.metrics.dead_letters.labels(self.service, queue, reason).inc()
        log.error("broker dead-lettered an event", extra={"subscription": queue, "reason": reason})
        return True


def _channel_closed(message: AbstractIncomingMessage) -> bool:
    try:
        return message.channel.is_closed
    except CHANNEL_GONE:
        return True


def _last_death(headers: dict[str, Any]) -> tuple[str, str]:
    """Where and why the broker dead-lettered a message this time. `x-first-death-*` name the first
    time ever: for an event retried before, that is its delay queue's expiry, and replaying it there
    would leave it in a queue nobody consumes."""
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):  # most recent first
        return str(deaths[0].get("queue", "unknown")), str(deaths[0].get("reason", "unknown"))
    return str(headers.get("x-first-death-queue", "unknown")), str(headers.get("x-first-death-reason", "unknown"))


class QueueWorker:
    """Feeds one queue's deliveries to `process`, and acks them once they settle.

    Deliveries that settle together (a shared transaction) are acked together: one ack with
    `multiple` covers the settled run at the head of what is unacked, and a quorum queue then
    spends about half the CPU per consumed message (docs/runtime.md). A delivery still being
    processed never holds up the acks of those behind it: they go one by one. One that is
    requeued, or left unsettled, is never covered by a `multiple` ack.

    An ordered queue (one active consumer) hands over to another replica the moment this one stops
    consuming. So on stop it does not cancel: it lets the deliveries being processed finish and
    acks them, leaves anything that arrives meanwhile untouched, and closes its channel, which
    returns those to the head of the queue before the next consumer takes over.
    """

    def __init__(self, queue_name: str, prefetch: int, process: Callable[[AbstractIncomingMessage], Awaitable[bool]],
                 *, stop_timeout_s: float, ordered: bool = False):
        self.queue_name = queue_name
        self._prefetch = prefetch
        self._process = process
        self._stop_timeout_s = stop_timeout_s
        self._ordered = ordered
        self._channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._tag: str | None = None
        self._inflight: set[asyncio.Task] = set()
        # Every delivery not yet acked or requeued, in arrival (so delivery tag) order: True once settled.
        self._unacked: dict[AbstractIncomingMessage, bool] = {}
        self._stopping = False

    async def start(self, connection: AbstractRobustConnection) -> None:
        self._channel = await connection.channel()
        await self._channel.set_qos(prefetch_count=self._prefetch)
        self._queue = await self._channel.get_queue(self.queue_name, ensure=True)
        self._tag = await self._queue.consume(self._on_message)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        if self._ordered and self._stopping:
            return  # left unsettled: the channel's close returns it, ahead of what follows it
        task = asyncio.current_task()
        assert task is not None
        self._inflight.add(task)
        self._unacked[message] = False
        try:
            await self._settle(message)
        except asyncio.CancelledError:
            # aiormq cancels a closed channel's consumers: their deliveries come back on their own, and
            # one left here would keep every later `multiple` ack from covering what follows it.
            if _channel_closed(message):
                self._unacked.pop(message, None)
            raise
        finally:
            self._inflight.discard(task)

    async def _settle(self, message: AbstractIncomingMessage) -> None:
        settled = False
        try:
            settled = await self._process(message)
        except Exception:  # noqa: BLE001 - a bug here must not kill the consumer; the broker redelivers
            log.exception("delivery not settled", extra={"queue": self.queue_name})
        try:
            if settled:
                self._unacked[message] = True
                await asyncio.sleep(0)  # the deliveries that settled with this one mark themselves too
                if message in self._unacked:  # else one that settled with it has acked it already
                    await self._ack_settled()
            elif not (self._ordered and self._stopping):
                # Back to the queue now rather than holding a prefetch slot until the channel dies;
                # the queue's delivery limit stops a message that can never settle.
                try:
                    await message.nack(requeue=True)
                finally:
                    del self._unacked[message]  # only now may a `multiple` ack pass over its tag
            # else: stays unacked, and so does everything after it, until the channel's close
        except CHANNEL_GONE as exc:
            self._outcome_not_sent(settled, exc)

    async def _ack_settled(self) -> None:
        """Ack every settled delivery: the run at the head with one `multiple` ack, the rest one by one."""
        head: list[AbstractIncomingMessage] = []
        behind: list[AbstractIncomingMessage] = []
        blocked = False
        for message, settled in self._unacked.items():
            if not settled:
                blocked = True
            elif blocked:
                behind.append(message)
            else:
                head.append(message)
        for message in (*head, *behind):
            del self._unacked[message]
        if head:
            try:
                # On the channel of the last: one a reconnect replaced cannot ack, and its deliveries
                # come back anyway.
                await head[-1].ack(multiple=len(head) > 1)
            except CHANNEL_GONE as exc:
                self._outcome_not_sent(True, exc, count=len(head))
        for message in behind:
            try:
                await message.ack()
            except CHANNEL_GONE as exc:
                self._outcome_not_sent(True, exc)

    def _outcome_not_sent(self, settled: bool, exc: BaseException, count: int = 1) -> None:
        # The channel closed under us: the broker redelivers, and the inbox absorbs a repeat.
        log.warning("delivery outcome not sent; it will be redelivered",
                    extra={"queue": self.queue_name, "settled": settled, "deliveries": count, "error": repr(exc)})

    async def stop(self) -> None:
        """Stop taking deliveries, then let the ones in flight finish."""
        self._stopping = True
        if not self._ordered and self._queue is not None and self._tag is not None:
            try:
                await asyncio.wait_for(self._queue.cancel(self._tag), timeout=5)
            except (TimeoutError, *CHANNEL_GONE):
                pass  # the channel is gone; its unacked deliveries return to the queue
        if self._inflight:
            await asyncio.wait(set(self._inflight), timeout=self._stop_timeout_s)
        if self._ordered and self._channel is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._channel.close(), timeout=5)


def _logged_as(envelope: Envelope) -> contextlib.AbstractContextManager[None]:
    """Every log line while an event is handled carries its ids."""
    return log_context(event_id=envelope.id, correlation_id=envelope.correlation_id,
                       causation_id=envelope.causation_id, tenant_id=envelope.tenant_id)


def _as_caused(envelope: Envelope, effects: list | None) -> list[Envelope]:
    """What a handler returned, as envelopes: plain events become children of the one it handled."""
    return [c if isinstance(c, Envelope) else envelope.child(c) for c in effects or ()]


class _FailedInGroup(Exception):
    """A handler failed inside a shared transaction: whose event it was (None: one of several), and why."""

    def __init__(self, event_id: uuid.UUID | None, cause: Exception):
        super().__init__(f"event {event_id or '(one of the group)'}: {cause!r}")
        self.event_id = event_id
        self.cause = cause


@contextlib.contextmanager
def _failing_as(event_id: uuid.UUID | None) -> Iterator[None]:
    """A handler's own failure undoes the group; an outage is not the handler's, and passes as it is."""
    try:
        yield
    except (DatabaseUnavailable, *db.CONNECTION_ERRORS):
        raise
    except Exception as exc:
        raise _FailedInGroup(event_id, exc) from exc


class _Stopping(Exception):
    """Shutting down while waiting for the database: leave the delivery unacked."""


async def until_database(work: Callable[[], Awaitable[Any]], *, stopping: asyncio.Event, backoff_s: float,
                         metrics: Metrics, service: str) -> Any:
    """Run `work`, waiting out database outages: nobody's fault, so no attempt is spent."""
    while True:
        try:
            return await work()
        except DatabaseUnavailable as exc:
            if stopping.is_set():
                raise _Stopping from exc
            metrics.database_waits.labels(service).inc()
            log.warning("database unavailable; delivery held", extra={"error": str(exc)})
            await asyncio.sleep(backoff_s)


def _failure(attempt: int, exc: BaseException) -> dict[str, Any]:
    return {"attempt": attempt, "error": _describe(exc)[:_ERROR_LIMIT], "at": datetime.now(UTC).isoformat()}


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
