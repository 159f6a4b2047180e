"""Failing handlers are retried with backoff, then parked in the dead-letter store and replayable."""

import asyncio
import json
import sys
import time

import asyncpg
import pytest

from shared.events.envelope import Envelope
from shared.events.publisher import build_message
from shared.events.runtime import serve
from tests.support import eventually

from .conftest import consumer_spec, publisher, record_effect, turn


async def wabus(isolated, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", *args, env=isolated.env(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    return proc.returncode, out.decode()


class Flaky:
    """Fails the first `failures` attempts at each event, then applies it."""

    def __init__(self, failures: int):
        self.failures = failures
        self.attempts: dict[str, list[float]] = {}

    async def __call__(self, envelope: Envelope, conn):
        seen = self.attempts.setdefault(str(envelope.id), [])
        seen.append(time.monotonic())
        if len(seen) <= self.failures:
            raise RuntimeError(f"boom #{len(seen)}")
        return await record_effect(envelope, conn)


async def test_handler_failing_twice_then_succeeding_is_applied_once_after_its_backoff(isolated, effects):
    flaky = Flaky(failures=2)
    envelope = turn(1)
    async with serve(isolated.settings(), consumer_spec(flaky, max_attempts=5, retry_base_s=0.4)), \
            publisher(isolated.amqp_url) as pub:
        await pub.publish(envelope)
        await eventually(lambda: effects.count(), what="applied after retries")
    times = flaky.attempts[str(envelope.id)]
    assert len(times) == 3
    # Backoff with jitter in [½, 1] of 0.4 s, then of 0.8 s.
    assert times[1] - times[0] >= 0.2 and times[2] - times[1] >= 0.4
    assert await effects.per_event() == {str(envelope.id): 1}
    assert await effects.failed() == []


async def test_always_failing_handler_lands_in_the_store_and_is_replayed_once_the_cause_is_gone(isolated, effects):
    flaky = Flaky(failures=10**6)
    envelope = turn(2)
    async with serve(isolated.settings(), consumer_spec(flaky, max_attempts=3, retry_base_s=0.05)), \
            publisher(isolated.amqp_url) as pub:
        await pub.publish(envelope)
        (failed,) = await eventually(lambda: effects.failed(), what="dead-lettered")
        assert failed["subscription"] == "processor.turns"
        assert failed["event_id"] == str(envelope.id) and failed["event_type"] == "turn.reached"
        assert failed["tenant_id"] == "clinic-a" and failed["attempts"] == 3
        assert failed["reason"] == "gave up after 3 attempts: RuntimeError: boom #3"
        assert [h["error"] for h in json.loads(failed["history"])] == [
            "RuntimeError: boom #1", "RuntimeError: boom #2", "RuntimeError: boom #3"]
        assert len(flaky.attempts[str(envelope.id)]) == 3

        code, listing = await wabus(isolated, "failed", "list", "--service", "processor")
        assert code == 0 and f"processor:{failed['id']}" in listing and "boom #3" in listing
        code, shown = await wabus(isolated, "failed", "show", f"processor:{failed['id']}")
        assert code == 0 and json.loads(shown)["history"][0]["error"] == "RuntimeError: boom #1"

        flaky.failures = 0  # the cause is gone
        code, out = await wabus(isolated, "failed", "retry", f"processor:{failed['id']}")
        assert code == 0, out
        await eventually(lambda: effects.count(), what="replayed event applied")

        code, listing = await wabus(isolated, "failed", "list")
        assert code == 0 and f"processor:{failed['id']}" not in listing
        code, out = await wabus(isolated, "failed", "retry", "--all")
        assert code == 0
        code, out = await wabus(isolated, "failed", "purge", "--service", "processor")
        assert code == 0 and "purged 1" in out
    assert await effects.per_event() == {str(envelope.id): 1}
    assert await effects.failed() == []


async def test_a_poison_message_does_not_hold_up_the_messages_behind_it(isolated, effects):
    poisoned = turn(0)
    flaky = Flaky(failures=10**6)

    async def fail_only_the_poisoned(envelope, conn):
        if envelope.id == poisoned.id:
            return await flaky(envelope, conn)
        return await record_effect(envelope, conn)

    good = [turn(n) for n in range(1, 6)]
    spec = consumer_spec(fail_only_the_poisoned, prefetch=1, max_attempts=3, retry_base_s=1.0)
    async with serve(isolated.settings(), spec), publisher(isolated.amqp_url) as pub:
        await pub.publish(poisoned)
        for envelope in good:
            await pub.publish(envelope)
        await eventually(lambda: _at_least(effects.count(), 5), what="the five behind it applied")
        # With a single delivery in flight, the five went through while the poisoned one waited out its backoff.
        assert await effects.failed() == []
        await eventually(lambda: effects.failed(), what="poisoned event dead-lettered")
    assert set(await effects.per_event()) == {str(e.id) for e in good}


async def test_undecodable_and_unknown_version_events_are_dead_lettered_at_once(isolated, effects):
    valid = turn(9)
    unknown_version = valid.encode().replace(b'"version":1', b'"version":99')
    async with serve(isolated.settings(), consumer_spec()), publisher(isolated.amqp_url) as pub:
        for body in (b"{not json", unknown_version):
            await pub.send("", "processor.turns", build_message(body=body, event_id="raw", event_type="",
                                                                correlation_id=None, occurred_at=None))
        await pub.publish(valid)
        await eventually(lambda: effects.count(), what="valid event applied")
        failed = await eventually(lambda: _at_least_rows(effects.failed(), 2), what="both dead-lettered")
    reasons = sorted(f["reason"] for f in failed)
    assert reasons[0].startswith("invalid event: body is not JSON")
    assert "version 99 is not supported" in reasons[1]
    assert all(f["attempts"] == 1 for f in failed)
    assert await effects.per_event() == {str(valid.id): 1}


async def _at_least(count_coro, n: int) -> bool:
    return (await count_coro) >= n


async def _at_least_rows(rows_coro, n: int):
    rows = await rows_coro
    return rows if len(rows) >= n else None


async def test_what_the_broker_dead_letters_by_itself_lands_in_the_store(isolated, effects):
    """A delivery that crashed its consumer up to the queue's delivery limit reaches <service>.dead."""
    envelope = turn(3)
    async with serve(isolated.settings(), consumer_spec()), publisher(isolated.amqp_url) as pub:
        crash_looped = build_message(
            body=envelope.encode(), event_id=str(envelope.id), event_type=envelope.type, correlation_id=None,
            occurred_at=None, headers={"x-first-death-queue": "processor.turns", "x-first-death-reason": "delivery_limit"})
        await pub.send("wabus.processor.dead", "turn.reached", crash_looped)
        (failed,) = await eventually(lambda: effects.failed(), what="stored")
    assert failed["subscription"] == "processor.turns"
    assert failed["reason"] == "broker dead-lettered: delivery_limit"
    assert failed["event_id"] == str(envelope.id) and failed["tenant_id"] == "clinic-a"


async def test_a_retried_event_the_broker_dead_letters_is_stored_for_its_own_queue(isolated, effects):
    # Retried once (its delay queue expired it), then crash-looped: the first death names the delay
    # queue, the latest names the subscription's queue, which is where a replay must go.
    envelope = turn(4)
    deaths = [{"queue": "processor.turns", "reason": "delivery_limit", "count": 1, "exchange": "",
               "routing-keys": ["processor.turns"]},
              {"queue": "processor.retry.1", "reason": "expired", "count": 1, "exchange": "wabus.processor.retry.1",
               "routing-keys": ["processor.turns"]}]
    async with serve(isolated.settings(), consumer_spec()), publisher(isolated.amqp_url) as pub:
        crash_looped = build_message(
            body=envelope.encode(), event_id=str(envelope.id), event_type=envelope.type, correlation_id=None,
            occurred_at=None, headers={"x-death": deaths, "x-first-death-queue": "processor.retry.1",
                                       "x-first-death-reason": "expired"})
        await pub.send("wabus.processor.dead", "turn.reached", crash_looped)
        (failed,) = await eventually(lambda: effects.failed(), what="stored")
    assert failed["subscription"] == "processor.turns"
    assert failed["reason"] == "broker dead-lettered: delivery_limit"
    assert (failed["requeue_exchange"], failed["requeue_routing_key"]) == ("", "processor.turns")


class FailsOne:
    """Applies every event but one, which it always fails after writing its effect."""

    def __init__(self, bad: Envelope):
        self.bad = bad.id
        self.calls: dict[str, int] = {}

    async def __call__(self, envelope: Envelope, conn):
        self.calls[str(envelope.id)] = self.calls.get(str(envelope.id), 0) + 1
        caused = await record_effect(envelope, conn)
        if envelope.id == self.bad:
            raise RuntimeError("boom")
        return caused


async def _all_waiting_then_consumed(isolated, effects, spec, envelopes: list[Envelope]) -> None:
    """The events all wait in the queue when the consumer starts, so they arrive together, as under
    load; returns once one of them is dead-lettered and the others applied."""
    async with serve(isolated.settings(), spec):
        pass  # the queues exist now
    async with publisher(isolated.amqp_url) as pub:
        await asyncio.gather(*(pub.publish(e) for e in envelopes))
    async with serve(isolated.settings(), spec):
        await eventually(lambda: effects.failed(), what="the failing event dead-lettered")
        await eventually(lambda: _at_least(effects.count(), len(envelopes) - 1), what="the others applied")
        await asyncio.sleep(0.5)


async def test_events_sharing_a_transaction_do_not_share_one_events_failure(isolated, effects):
    envelopes = [turn(100 + i) for i in range(60)]
    handler = FailsOne(envelopes[30])
    await _all_waiting_then_consumed(isolated, effects, consumer_spec(handler, max_attempts=2, retry_base_s=0.05),
                                     envelopes)
    # Every other event applied exactly once; the failing one's own writes were undone each time.
    assert await effects.per_event() == {str(e.id): 1 for e in envelopes if e.id != handler.bad}
    (failed,) = await effects.failed()
    assert failed["event_id"] == str(handler.bad) and failed["attempts"] == 2
    assert handler.calls[str(handler.bad)] == 2  # once per attempt: its own failure is not run again alone
    # They did share: fewer transactions (inbox rows carry their transaction's start) than events.
    (shared,) = await effects._fetch("SELECT count(DISTINCT applied_at) FROM inbox")
    assert shared[0] < 59


async def test_a_handler_of_many_that_fails_has_each_event_tried_alone(isolated, effects):
    """A handler that takes the group at once cannot say which event failed: the group is undone
    and every event is tried alone, so that only the failing one retries."""
    envelopes = [turn(300 + i) for i in range(60)]
    bad = envelopes[30].id
    sizes: list[int] = []

    async def record_all(group: list[Envelope], conn) -> list[list]:
        sizes.append(len(group))
        await conn.execute("INSERT INTO effects (event_id, ticket) SELECT * FROM unnest($1::uuid[], $2::text[])",
                           [e.id for e in group], [e.data.ticket for e in group])
        if any(e.id == bad for e in group):
            raise RuntimeError("boom")
        return [[] for _ in group]

    spec = consumer_spec(record_all, handles_many=True, max_attempts=2, retry_base_s=0.05)
    await _all_waiting_then_consumed(isolated, effects, spec, envelopes)
    assert await effects.per_event() == {str(e.id): 1 for e in envelopes if e.id != bad}
    (failed,) = await effects.failed()
    assert failed["event_id"] == str(bad) and failed["attempts"] == 2
    assert max(sizes) > 1  # they did come as groups


async def test_a_shards_events_share_transactions_in_order_and_one_failure_stays_its_own(isolated, effects):
    # One patient's chat: every event goes to the same shard, whose order must hold.
    envelopes = [turn(200 + i) for i in range(60)]
    handler = FailsOne(envelopes[30])
    spec = consumer_spec(handler, shards=2, max_attempts=2, retry_base_s=0.05)
    async with serve(isolated.settings(), spec):
        pass  # the queues exist now
    async with publisher(isolated.amqp_url) as pub:
        for envelope in envelopes:
            await pub.publish(envelope)  # one after another: the broker keeps this order
    async with serve(isolated.settings(), spec):
        await eventually(lambda: effects.failed(), what="the failing event dead-lettered")
        await eventually(lambda: _at_least(effects.count(), 59), what="the others applied")
        await asyncio.sleep(0.5)
    others = [e for e in envelopes if e.id != handler.bad]
    assert await effects.per_event() == {str(e.id): 1 for e in others}
    applied = [r[0] for r in await effects._fetch("SELECT ticket FROM effects ORDER BY at")]
    assert applied == [e.data.ticket for e in others]  # in the order they were published
    assert handler.calls[str(handler.bad)] == 2
    (shared,) = await effects._fetch("SELECT count(DISTINCT applied_at) FROM inbox")
    assert shared[0] < 59


async def _at_least(count, n: int) -> bool:
    return await count >= n


class CutOnce:
    """Loses its database connection the first time it meets an event (PostgreSQL restarting, say)."""

    def __init__(self, database_url: str):
        self.database_url = database_url
        self.calls = 0

    async def __call__(self, envelope: Envelope, conn):
        self.calls += 1
        if self.calls == 1:
            other = await asyncpg.connect(self.database_url)
            try:
                await other.execute("SELECT pg_terminate_backend($1)", conn.get_server_pid())
            finally:
                await other.close()
            await conn.execute("SELECT 1")  # the connection is gone under the handler
        return await record_effect(envelope, conn)


@pytest.mark.parametrize("prefetch", [1, 8], ids=["alone", "in a group"])
async def test_a_connection_lost_mid_transaction_is_an_outage_not_a_failed_attempt(isolated, effects, prefetch):
    handler = CutOnce(isolated.database_url)
    envelope = turn(400)
    # One attempt only: had the cut been taken for the handler's failure, the event would be dead-lettered.
    async with serve(isolated.settings(), consumer_spec(handler, max_attempts=1, prefetch=prefetch)), \
            publisher(isolated.amqp_url) as pub:
        await pub.publish(envelope)
        await eventually(lambda: effects.count(), what="applied once the database answers again")
    assert await effects.per_event() == {str(envelope.id): 1}
    assert await effects.failed() == []
    assert handler.calls == 2
