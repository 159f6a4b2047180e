"""A delivered event is applied once, however often and however concurrently it arrives."""

import asyncio

from shared.events import db
from shared.events.catalog import QueueStatusChanged, decode
from shared.events.consumer import EventConsumer
from shared.events.metrics import Metrics
from shared.events.runtime import METRICS, serve
from tests.support import Listener, eventually

from .conftest import consumer_spec, publisher, record_effect, turn


def _consumed(running, outcome: str) -> float:
    return running.app[METRICS].registry.get_sample_value("wabus_events_consumed_total", {
        "service": "processor", "subscription": "processor.turns", "event": "turn.reached", "outcome": outcome,
    }) or 0.0


async def test_same_event_delivered_twice_is_applied_once(isolated, effects):
    envelope = turn(1)
    async with serve(isolated.settings(), consumer_spec()) as running, publisher(isolated.amqp_url) as pub:
        await pub.publish(envelope)
        await eventually(lambda: _true(_consumed(running, "applied") == 1))
        await pub.publish(envelope)
        await eventually(lambda: _true(_consumed(running, "duplicate") == 1))
    assert await effects.per_event() == {str(envelope.id): 1}


async def slow_record(envelope, conn):
    await asyncio.sleep(0.3)  # keeps both copies in flight at once
    return await record_effect(envelope, conn)


async def test_same_event_delivered_twice_concurrently_is_applied_once(isolated, effects):
    envelope = turn(2)
    async with serve(isolated.settings(), consumer_spec(slow_record, prefetch=10)) as running, \
            publisher(isolated.amqp_url) as pub:
        await asyncio.gather(pub.publish(envelope), pub.publish(envelope))
        await eventually(lambda: _true(_consumed(running, "applied") + _consumed(running, "duplicate") == 2))
        assert _consumed(running, "applied") == 1
    assert await effects.per_event() == {str(envelope.id): 1}


async def test_applying_the_same_envelope_twice_changes_nothing(isolated, effects):
    """The runtime's apply, called directly, twice and concurrently: one effect."""
    spec = consumer_spec()
    pool = await db.create_pool(isolated.database_url, "processor", min_size=2, max_size=4, command_timeout=10,
                                connect_timeout=5)
    consumer = EventConsumer(service="processor", subscription=spec.subscriptions[0],
                             pool=pool, publisher=None,
                             make_uow=spec.unit_of_work, metrics=Metrics("processor"), unavailable_backoff_s=0.1,
                             stopping=asyncio.Event())
    envelope = turn(3)
    outcomes = await asyncio.gather(consumer._apply(envelope), consumer._apply(envelope))
    again = await consumer._apply(envelope)
    await pool.close()
    assert sorted(outcomes) == ["applied", "duplicate"] and again == "duplicate"
    assert await effects.per_event() == {str(envelope.id): 1}


async def announce_waiting(envelope, conn):
    await record_effect(envelope, conn)
    return [QueueStatusChanged(department="OPD", department_name="Outpatients", is_open=True, waiting=2,
                               current_ticket=envelope.data.ticket)]


async def test_events_a_handler_returns_go_out_through_the_outbox_in_the_same_chain(isolated, effects):
    envelope = turn(4)
    async with serve(isolated.settings(), consumer_spec(announce_waiting)), \
            Listener(isolated.amqp_url, "wabus.scheduler", ["queue.status.changed"]) as listener, \
            publisher(isolated.amqp_url) as pub:
        await pub.publish(envelope)
        (message,) = await listener.wait_for(1)
    child = decode(message.body)
    assert child.tenant_id == envelope.tenant_id
    assert child.correlation_id == envelope.correlation_id and child.causation_id == str(envelope.id)
    assert child.data.current_ticket == "OPD-004"
    assert await effects.count() == 1


async def _true(value: bool) -> bool:
    return value
