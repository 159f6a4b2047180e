"""The sender: takes queued notifications to the provider, under each session's limits.

One replica sends at a time (a session-level advisory lock, as the outbox relay), so a session's
concurrency and rate limits hold across replicas. A row is marked `sending` in its own committed
transaction before the provider is called: after a crash, a row still `sending` is an unknown
outcome, reconciled before anything is sent again — never blindly resent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from shared.events import db, outbox
from shared.events.catalog import BroadcastStatusChanged
from shared.events.consumer import until_database
from shared.events.envelope import Envelope
from shared.events.logs import log_context, mask_phone
from shared.events.metrics import Metrics

from . import receipts
from .providers import FailureKind, SendFailed, SendingProvider, Sent
from .settings import NotifierSettings

log = logging.getLogger(__name__)

CHANNEL = "notifier.due"
# Delivered at commit: the sender wakes for rows that exist.
WAKE_SENDER = f"SELECT pg_notify('{CHANNEL}', '')"

# Sessions with queued rows (due by $1): a skip scan, one probe of notifications_due per session,
# where DISTINCT would read every queued row on each pass.
_QUEUED_SESSIONS = """
WITH RECURSIVE queued AS (
    (SELECT session FROM notifications WHERE status = 'queued' AND next_attempt_at <= $1 ORDER BY session LIMIT 1)
    UNION ALL
    SELECT (SELECT n.session FROM notifications n
            WHERE n.status = 'queued' AND n.next_attempt_at <= $1 AND n.session > queued.session
            ORDER BY n.session LIMIT 1)
    FROM queued WHERE queued.session IS NOT NULL
)
SELECT session FROM queued WHERE session IS NOT NULL
"""

# Those of them that may send: one round trip per pass, not two.
_DUE_SESSIONS = f"""
SELECT session FROM ({_QUEUED_SESSIONS}) due
WHERE NOT EXISTS (SELECT FROM sessions s WHERE s.session = due.session AND NOT s.can_send)
"""

# `opted_out`: a broadcast row whose number wrote STOP after it was queued (the STOP and the broadcast
# committed concurrently); claimed so that it is settled as cancelled, never sent.
_CLAIM = """
UPDATE notifications n SET status = 'sending', sending_since = $3, attempts = attempts + 1
WHERE id IN (
    SELECT id FROM notifications WHERE status = 'queued' AND session = $1 AND next_attempt_at <= $3
    ORDER BY next_attempt_at, created_at LIMIT $2 FOR UPDATE SKIP LOCKED
)
RETURNING id, tenant_id, session, phone, text, attempts, sending_since, broadcast_id,
    broadcast_id IS NOT NULL AND EXISTS (SELECT FROM opt_outs o WHERE o.tenant_id = n.tenant_id AND o.phone = n.phone)
    AS opted_out
"""

OPTED_OUT = "the number opted out of broadcasts (STOP)"
# Why an unanswered send was not resent; such rows are left out of "retry all failed" (`maybe_sent`).
NOT_SENT_AGAIN = ("the send was not answered and this provider cannot be asked whether it went out:"
                  " not sent again, to never send twice")

# The database is away: the sender resigns and tries to lead again, rather than logging a bug.
_OUTAGES = (db.DatabaseUnavailable, *db.CONNECTION_ERRORS, asyncpg.InterfaceError, OSError, TimeoutError)

# What trips the circuit breaker: the provider not answering, or answering that it is failing.
_PROVIDER_FAILING = frozenset({FailureKind.UNREACHABLE, FailureKind.OUTCOME_UNKNOWN, FailureKind.PROVIDER_ERROR})


class SenderMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.send_seconds = Histogram("wabus_notifier_send_seconds", "Provider send latency", ["provider", "outcome"],
                                      registry=registry)
        self.provider_errors = Counter("wabus_notifier_provider_errors_total", "Provider errors by kind",
                                       ["provider", "kind"], registry=registry)
        self.circuit = Gauge("wabus_notifier_circuit_state", "0 closed, 1 open, 2 half-open", ["session"],
                             registry=registry)
        self.unknown = Counter("wabus_notifier_unknown_outcomes_total",
                               "Sends with no answer, by what became of them", ["resolution"], registry=registry)
        self.session_can_send = Gauge("wabus_notifier_session_can_send", "1 when the session can send",
                                      ["session"], registry=registry)
        self.session_connected = Gauge("wabus_notifier_session_connected", "1 when the session is linked",
                                       ["session"], registry=registry)


@dataclass
class SessionGate:
    """A session's limits: in-flight sends, a token bucket, and a circuit breaker."""

    max_in_flight: int
    rate_per_s: float  # 0: unlimited
    burst: float
    breaker_failures: int
    breaker_cooldown_s: float
    in_flight: int = 0
    tokens: float = 0.0
    refilled: float = field(default_factory=time.monotonic)
    paused_until: float = 0.0
    failures: int = 0
    open_until: float = 0.0
    probing: bool = False

    def __post_init__(self) -> None:
        self.tokens = self.burst

    def capacity(self, now: float) -> int:
        if now < self.paused_until:
            return 0
        if self.open_until:
            if now < self.open_until or self.probing:
                return 0
            self.probing = True  # half-open: one send decides
            return 1 if self.in_flight == 0 else 0
        free = self.max_in_flight - self.in_flight
        if self.rate_per_s <= 0:
            return max(0, free)
        self.tokens = min(self.burst, self.tokens + (now - self.refilled) * self.rate_per_s)
        self.refilled = now
        return max(0, min(free, int(self.tokens)))

    def took(self, n: int) -> None:
        self.in_flight += n
        if self.rate_per_s > 0:
            self.tokens -= n

    def next_token_in(self) -> float:
        if self.rate_per_s <= 0:
            return 0.0
        return max(0.0, (1 - self.tokens) / self.rate_per_s)

    def answered(self, result: Sent | SendFailed, now: float, default_pause_s: float) -> None:
        """Feel the provider's answer at once, before the next dispatch: the breaker trips on the
        failure that reaches its threshold, not when the outcome is written."""
        kind = None if isinstance(result, Sent) else result.kind
        if kind is FailureKind.RATE_LIMITED:
            self.pause(now, result.retry_after_s or default_pause_s)
        if kind in _PROVIDER_FAILING:
            self.failures += 1
            if self.probing or self.failures >= self.breaker_failures:
                self.open_until, self.probing = now + self.breaker_cooldown_s, False
        else:
            # Any answer but these shows the provider itself at work, whatever it made of the message.
            self.failures, self.open_until, self.probing = 0, 0.0, False

    def pause(self, now: float, seconds: float) -> None:
        self.paused_until = max(self.paused_until, now + seconds)

    @property
    def state(self) -> int:
        return 0 if not self.open_until else (2 if self.probing else 1)


def backoff_s(attempt: int, base_s: float, max_s: float) -> float:
    return min(max_s, base_s * 2 ** max(0, attempt - 1))


class Sender:
    def __init__(self, *, pool: asyncpg.Pool, dsn: str, provider: SendingProvider, settings: NotifierSettings,
                 metrics: SenderMetrics, runtime_metrics: Metrics, unavailable_backoff_s: float,
                 connect_timeout_s: float,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)):
        self._pool = pool
        self._dsn = dsn
        self.provider = provider
        self.settings = settings
        self._metrics = metrics
        self._runtime_metrics = runtime_metrics
        self._unavailable_backoff_s = unavailable_backoff_s
        self._connect_timeout_s = connect_timeout_s
        self._clock = clock
        self._gates: dict[str, SessionGate] = {}
        self._wake = asyncio.Event()
        self._lock_conn: asyncpg.Connection | None = None
        self._tasks: set[asyncio.Task] = set()
        self._outcomes: asyncio.Queue = asyncio.Queue()
        self._last_poll = 0.0
        self._last_housekeeping = 0.0

    @property
    def is_active(self) -> bool:
        return self._lock_conn is not None

    def wake(self, *_: object) -> None:
        self._wake.set()

    def gate(self, session: str) -> SessionGate:
        if session not in self._gates:
            s = self.settings
            self._gates[session] = SessionGate(s.max_in_flight_per_session, s.rate_per_s, s.rate_burst,
                                               s.breaker_failures, s.breaker_cooldown_s)
        return self._gates[session]

    # --- the loop -----------------------------------------------------------------------------

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            delay = self.settings.idle_poll_s
            self._wake.clear()  # before the pass: a wake-up during it means one more pass
            try:
                if not self.is_active:
                    await self._try_lead()
                if self.is_active:
                    await self._housekeeping()
                    delay = await self._dispatch()
            except _OUTAGES as exc:
                log.warning("sender paused: database unavailable", extra={"error": str(exc)})
                await self._resign()
            except Exception:  # noqa: BLE001 - the sender must outlive any one bad pass
                log.exception("sender pass failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_first(self._wake, stopping), timeout=delay)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self.settings.send_timeout_s + 5)
        await self._resign()

    async def _housekeeping(self) -> None:
        """Session polls and unknown outcomes, every idle_poll_s. A bug in them is logged, and
        sending goes on: queued messages must never wait on a send that cannot be settled."""
        if time.monotonic() - self._last_housekeeping < self.settings.idle_poll_s:
            return
        self._last_housekeeping = time.monotonic()
        await self._lock_conn.fetchval("SELECT 1")  # still leading: the lock lives with it
        try:
            await self._poll_sessions()
            await self._reconcile_unknown()
        except _OUTAGES:
            raise
        except Exception:  # noqa: BLE001 - see the docstring
            log.exception("sender housekeeping failed")

    async def _try_lead(self) -> None:
        conn = await db.lock_holder(self._dsn, "notifier", "notifier-sender", timeout=self._connect_timeout_s)
        if conn is None:
            return
        await conn.add_listener(CHANNEL, self.wake)
        self._lock_conn = conn
        # Rows a crashed sender left mid-send: nobody knows whether they went out.
        async with db.transaction(self._pool) as tx:
            stranded = await tx.execute(
                "UPDATE notifications SET status = 'unknown', reason = 'the sender stopped during the send'"
                " WHERE status = 'sending'")
        log.info("sender active", extra={"stranded_sends": int(stranded.split()[-1])})

    async def _resign(self) -> None:
        conn, self._lock_conn = self._lock_conn, None
        if conn is not None:
            await db.let_go(conn)

    async def _dispatch(self) -> float:
        """Start what each session may send now; return how long to sleep before looking again."""
        now_dt, now = self._clock(), time.monotonic()
        next_look = self.settings.idle_poll_s
        async with self._pool.acquire() as conn:
            for record in await conn.fetch(_DUE_SESSIONS, now_dt):
                session = record["session"]
                gate = self.gate(session)
                room = gate.capacity(now)
                self._metrics.circuit.labels(session).set(gate.state)
                if room <= 0:
                    next_look = min(next_look, max(0.01, gate.next_token_in()), 0.05)
                    continue
                # One statement, committed before it answers: every row is `sending` before it is sent.
                claimed = await conn.fetch(_CLAIM, session, min(room, self.settings.claim_batch), now_dt)
                rows = [row for row in claimed if not row["opted_out"]]
                if len(rows) < len(claimed):
                    await self._skip_opted_out([row for row in claimed if row["opted_out"]], now_dt)
                gate.took(len(rows))
                for row in rows:
                    task = asyncio.create_task(self._send(row, gate))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                if len(claimed) == room:
                    next_look = min(next_look, gate.next_token_in() or 0.0)
        return next_look

    async def _skip_opted_out(self, rows: list[asyncpg.Record], now: datetime) -> None:
        async with db.transaction(self._pool) as conn:
            await conn.execute("UPDATE notifications SET status = 'cancelled', reason = $2"
                               " WHERE id = ANY($1::uuid[]) AND status = 'sending'", [r["id"] for r in rows], OPTED_OUT)
            events = []
            for broadcast_id in {row["broadcast_id"] for row in rows}:
                events += await broadcast_progress(conn, broadcast_id, now)
            await outbox.add(conn, events)
        log.info("broadcast messages to opted-out numbers cancelled", extra={"count": len(rows)})

    async def _send(self, row: asyncpg.Record, gate: SessionGate) -> None:
        with log_context(notification_id=row["id"], tenant_id=row["tenant_id"]):
            started = time.perf_counter()
            try:
                async with asyncio.timeout(self.settings.send_timeout_s):
                    sent = await self.provider.send_text(row["session"], row["phone"], row["text"])
            except TimeoutError:
                sent = SendFailed(FailureKind.OUTCOME_UNKNOWN, f"no answer within {self.settings.send_timeout_s:g} s")
            except SendFailed as exc:
                sent = exc
            except Exception as exc:  # noqa: BLE001 - a bug in an adapter is an unknown outcome, not a crash
                log.exception("send failed unexpectedly")
                sent = SendFailed(FailureKind.OUTCOME_UNKNOWN, f"{type(exc).__name__}: {exc}")
            finally:
                gate.in_flight -= 1
                if gate.in_flight <= gate.max_in_flight // 2:
                    self.wake()  # room for a batch: refill now rather than after the outcomes are written
            outcome = "sent" if isinstance(sent, Sent) else sent.kind.value
            self._metrics.send_seconds.labels(self.provider.provider.value, outcome).observe(
                time.perf_counter() - started)
            gate.answered(sent, time.monotonic(), self.settings.retry_base_s)
            if isinstance(sent, Sent) and log.isEnabledFor(logging.INFO):
                log.info("notification sent", extra={"to": mask_phone(row["phone"]),
                                                     "provider_message_id": sent.provider_message_id})
            self._outcomes.put_nowait((row, sent))

    async def record_outcomes(self, stopping: asyncio.Event) -> None:
        """Write send outcomes in batches: one transaction for whatever finished meanwhile."""
        while not (stopping.is_set() and self._outcomes.empty() and not self._tasks):
            try:
                first = await asyncio.wait_for(self._outcomes.get(), timeout=0.5)
            except TimeoutError:
                continue
            batch = [first]
            while not self._outcomes.empty() and len(batch) < self.settings.claim_batch:
                batch.append(self._outcomes.get_nowait())
            try:
                await until_database(lambda batch=batch: self._record(batch), stopping=stopping,
                                     backoff_s=self._unavailable_backoff_s, metrics=self._runtime_metrics,
                                     service="notifier")
            except Exception:  # noqa: BLE001 - the rows stay `sending`: reconciled as unknown outcomes
                log.exception("could not record send outcomes", extra={"count": len(batch)})
            self.wake()

    async def _record(self, batch: list[tuple[asyncpg.Record, Sent | SendFailed]]) -> None:
        now = self._clock()
        async with db.transaction(self._pool) as conn:
            sent = [(row, result.provider_message_id) for row, result in batch if isinstance(result, Sent)]
            events = await self._mark_all_sent(conn, sent, now)
            for row, result in batch:
                if not isinstance(result, Sent):
                    events += await self._failed(conn, row, result, now)
            for broadcast_id in {row["broadcast_id"] for row, _ in batch if row["broadcast_id"] is not None}:
                events += await broadcast_progress(conn, broadcast_id, now)
            await outbox.add(conn, events)

    async def _mark_all_sent(self, conn: asyncpg.Connection, sent: list[tuple[asyncpg.Record, str]],
                             now: datetime) -> list[Envelope]:
        """Rows the provider took, with its message ids: one statement, then acks that came before the answer."""
        if not sent:
            return []
        ids, message_ids = [row["id"] for row, _ in sent], [message_id for _, message_id in sent]
        await conn.execute(
            "UPDATE notifications n SET status = 'sent', provider_message_id = s.message_id, sent_at = $3,"
            " reason = NULL FROM unnest($1::uuid[], $2::text[]) AS s(id, message_id) WHERE n.id = s.id",
            ids, message_ids, now)
        events = [e for row, message_id in sent for e in receipts.as_envelopes(
            row, receipts.status_changed(row, "sent", provider_message_id=message_id))]
        early = {r["provider_message_id"] for r in await conn.fetch(
            "SELECT DISTINCT provider_message_id FROM early_acks WHERE provider_message_id = ANY($1::text[])",
            message_ids)}
        for row, message_id in sent:
            if message_id in early:
                events += await receipts.apply_early(conn, row, message_id)
        return events

    async def _failed(self, conn: asyncpg.Connection, row: asyncpg.Record, failure: SendFailed,
                      now: datetime) -> list[Envelope]:
        kind = failure.kind
        self._metrics.provider_errors.labels(self.provider.provider.value, kind.value).inc()
        log.warning("send failed", extra={"kind": kind.value, "reason": failure.reason, "attempt": row["attempts"]})
        if kind is FailureKind.OUTCOME_UNKNOWN:
            await conn.execute("UPDATE notifications SET status = 'unknown', reason = $2 WHERE id = $1",
                               row["id"], failure.reason)
            return []
        if kind is FailureKind.SESSION_NOT_READY:
            # Not the message's fault: hold the session, give the attempt back.
            await conn.execute(
                "UPDATE notifications SET status = 'queued', attempts = attempts - 1, reason = $2 WHERE id = $1",
                row["id"], failure.reason)
            await hold_session(conn, row["session"], failure.reason, now)
            self._metrics.session_can_send.labels(row["session"]).set(0)
            return []
        if failure.transient:
            if row["attempts"] < self.settings.max_attempts:
                settings = self.settings
                delay = failure.retry_after_s or backoff_s(row["attempts"], settings.retry_base_s, settings.retry_max_s)
                await conn.execute(
                    "UPDATE notifications SET status = 'queued', next_attempt_at = $2, reason = $3 WHERE id = $1",
                    row["id"], now + timedelta(seconds=delay), failure.reason)
                return []
            reason = f"gave up after {row['attempts']} attempts: {failure.reason}"
        else:
            reason = failure.reason
        await conn.execute("UPDATE notifications SET status = 'failed', reason = $2, failed_at = $3 WHERE id = $1",
                           row["id"], reason, now)
        return receipts.as_envelopes(row, receipts.status_changed(row, "failed", reason=reason))

    # --- unknown outcomes and session health --------------------------------------------------

    async def _reconcile_unknown(self) -> None:
        """Settle sends nobody answered: found at the provider → sent; else resend only where we can look."""
        now = self._clock()
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT id, tenant_id, session, phone, text, sending_since, broadcast_id FROM notifications"
                " WHERE (status = 'unknown' AND sending_since <= $1) OR (status = 'sending' AND sending_since <= $2)"
                " ORDER BY sending_since LIMIT 100",
                now - timedelta(seconds=self.settings.reconcile_after_s),
                # A send whose outcome could not be recorded: as unknown as one never answered.
                now - timedelta(seconds=self.settings.send_timeout_s + self.settings.reconcile_after_s + 30))
        for row in rows:
            with log_context(notification_id=row["id"], tenant_id=row["tenant_id"]):
                try:
                    await self._reconcile(row, now)
                except (SendFailed, TimeoutError) as exc:
                    log.warning("reconciliation postponed", extra={"error": str(exc)})
                except _OUTAGES:
                    raise
                except Exception:  # noqa: BLE001 - one row that cannot be settled must not hold the others
                    log.exception("reconciliation failed; tried again on the next pass")

    async def _reconcile(self, row: asyncpg.Record, now: datetime) -> None:
        found = await self._find_sent(row)
        async with db.transaction(self._pool) as conn:
            if await conn.fetchval("SELECT status FROM notifications WHERE id = $1 FOR UPDATE",
                                   row["id"]) not in ("unknown", "sending"):
                return
            if found:
                events = await self._mark_all_sent(conn, [(row, found)], now)
                resolution = "found_sent"
            elif self.provider.can_look_up:
                await conn.execute(
                    "UPDATE notifications SET status = 'queued', next_attempt_at = $2, reason ="
                    " 'not found at the provider after an unanswered send: sent again' WHERE id = $1",
                    row["id"], now)
                events, resolution = [], "resent"
            else:
                await conn.execute("UPDATE notifications SET status = 'failed', reason = $2, failed_at = $3,"
                                   " maybe_sent = true WHERE id = $1", row["id"], NOT_SENT_AGAIN, now)
                events = receipts.as_envelopes(row, receipts.status_changed(row, "failed", reason=NOT_SENT_AGAIN))
                resolution = "given_up"
            if row["broadcast_id"] is not None:
                events += await broadcast_progress(conn, row["broadcast_id"], now)
            await outbox.add(conn, events)
        self._metrics.unknown.labels(resolution).inc()
        log.info("unknown outcome settled", extra={"resolution": resolution})

    async def _find_sent(self, row: asyncpg.Record) -> str | None:
        """The provider's id for this row's message, never one that another row already holds: the
        same text sent twice to one number (HELP twice) matches both, and the older's id is taken."""
        taken: set[str] = set()
        while True:
            found = await asyncio.wait_for(self.provider.find_sent(
                row["session"], row["phone"], row["text"], row["sending_since"] - timedelta(seconds=5),
                taken=frozenset(taken)), timeout=self.settings.send_timeout_s)
            if found is None:
                return None
            if found in taken:  # an adapter that ignores `taken` would have us ask forever
                raise SendFailed(FailureKind.PROVIDER_ERROR, "the lookup answered an id already held")
            async with self._pool.acquire() as conn:
                holder = await conn.fetchval("SELECT id FROM notifications WHERE provider_message_id = $1", found)
            if holder is None or holder == row["id"]:
                return found
            taken.add(found)

    async def _poll_sessions(self) -> None:
        if time.monotonic() - self._last_poll < self.settings.session_poll_s:
            return
        self._last_poll = time.monotonic()
        async with self._pool.acquire() as conn:
            sessions = [r["session"] for r in await conn.fetch(
                f"{_QUEUED_SESSIONS} UNION SELECT session FROM sessions", datetime.max.replace(tzinfo=UTC))]
        for session in sessions:
            try:
                state = await asyncio.wait_for(self.provider.session_state(session),
                                               timeout=self.settings.send_timeout_s)
            except (SendFailed, TimeoutError) as exc:
                log.warning("session check failed", extra={"session": session, "error": str(exc)})
                continue
            now = self._clock()
            async with db.transaction(self._pool) as conn:
                await conn.execute(
                    "INSERT INTO sessions (session, status, connected, can_send, source, changed_at, checked_at)"
                    " VALUES ($1, $2, $3, $4, 'poll', $5, $5) ON CONFLICT (session) DO UPDATE SET"
                    " status = EXCLUDED.status, connected = EXCLUDED.connected, can_send = EXCLUDED.can_send,"
                    " source = 'poll', changed_at = CASE WHEN sessions.can_send = EXCLUDED.can_send"
                    " THEN sessions.changed_at ELSE EXCLUDED.changed_at END, checked_at = EXCLUDED.checked_at",
                    session, state.status.value, state.connected, state.can_send, now)
            self._metrics.session_can_send.labels(session).set(int(state.can_send))
            self._metrics.session_connected.labels(session).set(int(state.connected))


async def hold_session(conn: asyncpg.Connection, session: str, reason: str, now: datetime) -> None:
    await conn.execute(
        "INSERT INTO sessions (session, status, connected, can_send, source, changed_at, checked_at)"
        " VALUES ($1, 'not_ready', false, false, 'send', $2, $2) ON CONFLICT (session) DO UPDATE SET"
        " can_send = false, source = 'send', changed_at = $2, checked_at = $2", session, now)


# `broadcast_id IS NOT NULL` repeats the partial index's predicate, so that the planner uses it.
_UNSETTLED = """
SELECT EXISTS (SELECT FROM notifications
               WHERE broadcast_id = $1 AND broadcast_id IS NOT NULL AND status IN ('queued', 'sending', 'unknown'))
"""

_PROGRESS = """
SELECT count(*) FILTER (WHERE status IN ('queued', 'sending', 'unknown')) AS pending,
       count(*) FILTER (WHERE status IN ('sent', 'delivered', 'read')) AS sent,
       count(*) FILTER (WHERE status = 'failed') AS failed,
       count(*) AS total
FROM notifications WHERE broadcast_id = $1
"""


async def broadcast_progress(conn: asyncpg.Connection, broadcast_id: uuid.UUID, now: datetime) -> list[Envelope]:
    """Move a broadcast along: running while recipients are pending, then completed, partial or failed."""
    current = await conn.fetchrow("SELECT tenant_id, status FROM broadcasts WHERE id = $1 FOR UPDATE", broadcast_id)
    if current is None or current["status"] == "cancelled":
        return []
    if current["status"] == "running" and await conn.fetchval(_UNSETTLED, broadcast_id):
        return []  # still running: no need to count every recipient after each batch
    p = await conn.fetchrow(_PROGRESS, broadcast_id)
    if p["pending"]:
        status = "running"
    elif p["failed"] == 0:
        status = "completed"
    elif p["sent"] == 0:
        status = "failed"
    else:
        status = "partial"
    if status == current["status"]:
        return []
    await conn.execute("UPDATE broadcasts SET status = $2::text,"
                       " finished_at = CASE WHEN $2::text <> 'running' THEN $3::timestamptz END WHERE id = $1",
                       broadcast_id, status, now)
    return [broadcast_changed(current["tenant_id"], broadcast_id, status, p)]


async def cancelled(conn: asyncpg.Connection, tenant_id: str, broadcast_id: uuid.UUID) -> list[Envelope]:
    """The event for a broadcast just cancelled, with its counts as they stand."""
    return [broadcast_changed(tenant_id, broadcast_id, "cancelled", await conn.fetchrow(_PROGRESS, broadcast_id))]


def broadcast_changed(tenant_id: str, broadcast_id: uuid.UUID, status: str, progress: asyncpg.Record) -> Envelope:
    return Envelope.new(BroadcastStatusChanged(broadcast_id=str(broadcast_id), status=status, total=progress["total"],
                                               sent=progress["sent"], failed=progress["failed"]), tenant_id=tenant_id)


async def _first(*events: asyncio.Event) -> None:
    tasks = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
