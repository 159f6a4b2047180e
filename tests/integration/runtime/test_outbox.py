"""Events written through the outbox reach subscribers intact, and only when their transaction commits."""

import asyncio
import json
from datetime import UTC, datetime

import asyncpg

from shared.events import db, deadletters, outbox
from shared.events.catalog import Patient, QueueClosed, TurnReached, decode, route_of
from shared.events.envelope import Envelope
from shared.events.errors import PublishFailed
from shared.events.metrics import Metrics
from shared.events.outbox import Relay
from shared.events.publisher import build_message
from shared.events.runtime import METRICS, ServiceSpec, serve
from tests.support import Listener, eventually

from .conftest import consumer_spec, publisher, turn

SCHEDULER = ServiceSpec(name="scheduler", port=0, schema="scheduler")


async def _pool(isolated, schema="scheduler") -> asyncpg.Pool:
    return await db.create_pool(isolated.database_url, schema, min_size=1, max_size=4, command_timeout=10,
                                connect_timeout=5)


async def test_outbox_event_reaches_a_bound_consumer_with_every_envelope_field(isolated):
    async with serve(isolated.settings(), SCHEDULER), Listener(isolated.amqp_url, "wabus.scheduler",
                                                                 ["turn.reached"]) as listener:
        envelope = turn(12)
        pool = await _pool(isolated)
        async with db.transaction(pool) as conn:
            await outbox.add(conn, [envelope])
        (message,) = await listener.wait_for(1)
        await pool.close()

    assert decode(message.body) == envelope
    assert json.loads(message.body) == json.loads(envelope.encode())
    assert message.message_id == str(envelope.id)
    assert message.type == "turn.reached"
    assert message.content_type == "application/json"
    assert message.delivery_mode == 2
    assert message.correlation_id == envelope.correlation_id
    assert message.routing_key == "turn.reached" and message.exchange == "wabus.scheduler"
    assert message.timestamp is not None


async def test_rolled_back_transaction_publishes_nothing(isolated):
    async with serve(isolated.settings(), SCHEDULER), Listener(isolated.amqp_url, "wabus.scheduler",
                                                                 ["turn.reached"]) as listener:
        pool = await _pool(isolated)
        rolled_back, committed = turn(1), turn(2)
        try:
            async with db.transaction(pool) as conn:
                await outbox.add(conn, [rolled_back])
                raise RuntimeError("the state change failed")
        except RuntimeError:
            pass
        async with db.transaction(pool) as conn:
            await outbox.add(conn, [committed])
        await listener.wait_for(1)
        await pool.close()
    # The relay publishes in outbox order: had the rolled-back row existed, it would have come first.
    assert [m.message_id for m in listener.messages] == [str(committed.id)]


class _KilledAfterPublish(BaseException):
    """Stands in for the relay process dying between the broker's confirm and the row's delete."""


class _CrashingPublisher:
    def __init__(self, real):
        self.real = real

    async def send_many(self, messages):
        await self.real.send_many(messages)
        raise _KilledAfterPublish


async def test_relay_killed_between_publish_and_mark_publishes_again_and_the_inbox_absorbs_it(isolated, effects):
    envelope = turn(7)
    async with serve(isolated.settings(), consumer_spec()) as processor:
        pool = await _pool(isolated)
        async with db.transaction(pool) as conn:
            await outbox.add(conn, [envelope])

        # A relay that dies right after the confirm: the row stays, because its delete never committed.
        async with publisher(isolated.amqp_url) as real:
            dying = Relay(dsn=isolated.database_url, schema="scheduler", publisher=_CrashingPublisher(real),
                          metrics=Metrics("scheduler"), batch_size=10, poll_interval_s=1, connect_timeout_s=5,
                          command_timeout_s=10)
            try:
                await dying.drain()
            except _KilledAfterPublish:
                pass
            finally:
                await dying.close()  # a process that dies takes its connection, and the relay's lock, with it
        async with pool.acquire() as conn:
            assert (await outbox.backlog(conn))[0] == 1

        # The next relay (a restarted scheduler) publishes the same event again.
        async with serve(isolated.settings(), SCHEDULER):
            async def drained():
                async with pool.acquire() as conn:
                    return (await outbox.backlog(conn))[0] == 0
            await eventually(drained, what="outbox drained")

            await eventually(lambda: _two_deliveries(processor), what="both copies delivered")
        await pool.close()

    assert await effects.per_event() == {str(envelope.id): 1}


async def _two_deliveries(processor) -> bool:
    registry = processor.app[METRICS].registry
    applied = registry.get_sample_value("wabus_events_consumed_total", {
        "service": "processor", "subscription": "processor.turns", "event": "turn.reached", "outcome": "applied"})
    duplicate = registry.get_sample_value("wabus_events_consumed_total", {
        "service": "processor", "subscription": "processor.turns", "event": "turn.reached", "outcome": "duplicate"})
    return applied == 1 and duplicate == 1


async def test_unroutable_event_is_an_error_not_a_silent_drop(isolated):
    async with serve(isolated.settings(), SCHEDULER), publisher(isolated.amqp_url) as pub:
        # wabus.scheduler exists, but nothing is bound to turn.reached yet.
        try:
            await pub.publish(turn(1))
        except PublishFailed as exc:
            assert "unroutable" in str(exc)
        else:
            raise AssertionError("an unroutable publish was confirmed as if delivered")


async def test_an_unroutable_message_without_an_id_is_still_an_error(isolated):
    # A broker's return names the message by its id; a replayed failed event may have none.
    anonymous = build_message(body=b"{}", event_id="", event_type="turn.reached", correlation_id=None,
                              occurred_at=None)
    async with serve(isolated.settings(), SCHEDULER), publisher(isolated.amqp_url) as pub:
        try:
            await pub.send("wabus.scheduler", "turn.reached", anonymous)
        except PublishFailed as exc:
            assert exc.reason == "unroutable"
        else:
            raise AssertionError("an unroutable publish was confirmed as if delivered")


async def test_a_batch_goes_out_in_order_and_each_message_gets_its_own_outcome(isolated):
    # One write carries the whole batch: bodies longer than a frame are split, and a message nothing is
    # bound for fails alone.
    big = [Envelope.new(TurnReached(department="OPD", department_name="x" * 300_000, ticket=f"OPD-{n:03d}",
                                    ticket_id=f"t-{n}", patient=Patient(chat_id="212600000000@c.us")),
                        tenant_id="clinic-a") for n in range(3)]
    small = [turn(n) for n in range(100, 150)]
    nobody_listens = Envelope.new(
        QueueClosed(department="OPD", department_name="Outpatients", closed_at=datetime.now(UTC),
                    closed_by="nurse"), tenant_id="clinic-a")
    batch = [big[0], *small[:25], nobody_listens, big[1], *small[25:], big[2]]
    async with serve(isolated.settings(), SCHEDULER), publisher(isolated.amqp_url) as pub, \
            Listener(isolated.amqp_url, "wabus.scheduler", ["turn.reached"]) as listener:
        failures = await pub.send_many([(*_route(e), _message(e)) for e in batch])
        await listener.wait_for(len(batch) - 1)

    assert [f.reason if f else None for f in failures] == [
        "unroutable" if e is nobody_listens else None for e in batch]
    assert [m.message_id for m in listener.messages] == [str(e.id) for e in batch if e is not nobody_listens]
    assert decode(listener.messages[0].body) == big[0]


def _route(envelope: Envelope) -> tuple[str, str]:
    route = route_of(envelope.type, envelope.version)
    return route.exchange, route.routing_key


def _message(envelope: Envelope):
    return build_message(body=envelope.encode(), event_id=str(envelope.id), event_type=envelope.type,
                         correlation_id=envelope.correlation_id, occurred_at=envelope.occurred_at,
                         headers=envelope.headers())


async def test_events_admitted_in_the_same_statement_are_kept_in_order_and_only_those(isolated):
    async with serve(isolated.settings(), SCHEDULER), Listener(isolated.amqp_url, "wabus.scheduler",
                                                                 ["turn.reached"]) as listener:
        pool = await _pool(isolated)
        events = [turn(n) for n in range(12)]
        admit = [n % 3 != 1 for n in range(12)]
        async with pool.acquire() as conn:
            admitted = await outbox.add_admitted(
                conn, events, "SELECT event_id FROM unnest($1::uuid[], $9::bool[]) AS a(event_id, admit) WHERE admit",
                admit)
        await listener.wait_for(8)
        await pool.close()

    expected = [e for e, ok in zip(events, admit, strict=True) if ok]
    assert admitted == {e.id for e in expected}
    assert [m.message_id for m in listener.events()] == [str(e.id) for e in expected]


async def test_a_notify_wakes_the_relay_without_waiting_for_its_poll(isolated):
    settings = isolated.settings(outbox_poll_interval_s=60.0)
    async with serve(settings, SCHEDULER), Listener(isolated.amqp_url, "wabus.scheduler",
                                                     ["turn.reached"]) as listener:
        pool = await _pool(isolated)
        # Let the relay finish its first pass and go to sleep on the 60 s poll.
        await asyncio.sleep(1.0)
        async with db.transaction(pool) as conn:
            await outbox.add(conn, [turn(5)])
        await listener.wait_for(1, timeout=10)
        await pool.close()


async def test_an_event_no_queue_is_bound_for_is_parked_visibly_and_does_not_hold_up_the_rest(isolated):
    nobody_listens = Envelope.new(
        QueueClosed(department="OPD", department_name="Outpatients", closed_at=datetime.now(UTC),
                    closed_by="nurse"), tenant_id="clinic-a")
    async with serve(isolated.settings(), SCHEDULER), Listener(isolated.amqp_url, "wabus.scheduler",
                                                                 ["turn.reached"]) as listener:
        pool = await _pool(isolated)
        async with db.transaction(pool) as conn:
            await outbox.add(conn, [nobody_listens, turn(1), turn(2)])
        await listener.wait_for(2)

        async def parked():
            async with pool.acquire() as conn:
                return await conn.fetch("SELECT * FROM failed_events")
        (row,) = await eventually(parked, what="unroutable event parked")
        assert row["subscription"] == "outbox" and row["event_id"] == str(nobody_listens.id)
        assert row["reason"].startswith("unroutable: no queue bound to wabus.scheduler queue.closed")
        assert (row["requeue_exchange"], row["requeue_routing_key"]) == ("wabus.scheduler", "queue.closed")
        async with pool.acquire() as conn:
            assert (await outbox.backlog(conn))[0] == 0

        # Once someone listens, `wabus failed retry` delivers it.
        async with Listener(isolated.amqp_url, "wabus.scheduler", ["queue.closed"]) as late:
            async with pool.acquire() as conn, publisher(isolated.amqp_url) as pub:
                (failed,) = await deadletters.list_failed(conn)
                await deadletters.retry_failed(conn, pub, failed)
            (message,) = await late.wait_for(1)
            assert message.message_id == str(nobody_listens.id)
        await pool.close()


async def test_the_relays_connection_plans_each_settling_for_the_outbox_as_it_is_now(isolated):
    # The relay settles its first batches while the outbox is nearly empty. Cached, that plan reads the
    # whole table, and the table grows under load; the relay's connection must not keep it.
    conn = await db.connect(isolated.database_url, "scheduler", timeout=5, plan_each_time=True)
    try:
        await conn.execute(f"PREPARE settle_and_claim AS {outbox._SETTLE_AND_CLAIM}")
        for _ in range(8):  # more passes than PostgreSQL plans afresh before it may cache a plan
            await outbox.add(conn, [turn(n) for n in range(12)])
            seqs = ",".join(str(r["seq"]) for r in await conn.fetch("SELECT seq FROM outbox"))
            await conn.execute(f"EXECUTE settle_and_claim('{{{seqs}}}', '{{}}', '{{}}', 200)")
        await outbox.add(conn, [turn(n) for n in range(5000)])
        plan = json.loads(await conn.fetchval(
            "EXPLAIN (FORMAT JSON) EXECUTE settle_and_claim('{1, 2}', '{}', '{}', 200)"))
    finally:
        await conn.close()

    scans = _scans(plan[0]["Plan"])
    assert ("Seq Scan", "outbox") not in scans and ("Index Scan", "outbox_pkey") in scans, scans


def _scans(node: dict) -> set[tuple[str, str]]:
    here = {(node["Node Type"], node.get("Index Name") or node.get("Relation Name", ""))}
    return here.union(*(_scans(child) for child in node.get("Plans", [])))
