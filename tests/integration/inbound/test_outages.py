"""PostgreSQL or RabbitMQ out of reach: nothing accepted is lost, nothing unkept is acknowledged."""

import json
from urllib.parse import urlsplit

from shared.events.catalog import decode
from tests.samples import sample_bytes
from tests.support import Listener, TcpProxy, eventually

from .conftest import rows, running, via


def _message(n: int) -> bytes:
    body = json.loads(sample_bytes("waha/message.text.webjs.json"))
    body["payload"]["id"] = f"false_212600000000@c.us_OUTAGE{n:04d}"
    body["payload"]["fromMe"] = False
    return json.dumps(body).encode()


async def _proxy_for(url: str) -> TcpProxy:
    parts = urlsplit(url)
    return await TcpProxy(parts.hostname, parts.port).start()


async def test_database_down_answers_503_with_retry_after_and_keeps_nothing(isolated, tenants):
    proxy = await _proxy_for(isolated.database_url)
    try:
        settings = isolated.settings(database_url=via(isolated.database_url, proxy.port))
        async with running(settings) as inbound:
            status, _, _ = await inbound.post("waha", _message(1))
            assert status == 200
            await proxy.cut()
            status, answer, headers = await inbound.post("waha", _message(2))
            assert status == 503 and headers["Retry-After"] == "5", answer
            await proxy.restore()
            # The provider retries after Retry-After; now it is kept.
            await eventually(lambda: _accepted(inbound, _message(2)), timeout=30, what="accepted after restore")
    finally:
        await proxy.close()
    kept = await rows(isolated.database_url, "SELECT dedupe_key FROM gateway.received_webhooks ORDER BY dedupe_key")
    assert [r["dedupe_key"] for r in kept] == ["msg:OUTAGE0001", "msg:OUTAGE0002"]


async def test_broker_down_webhooks_are_still_accepted_and_all_processed_after_it_returns(isolated, tenants):
    proxy = await _proxy_for(isolated.amqp_url)
    try:
        settings = isolated.settings(amqp_url=via(isolated.amqp_url, proxy.port), reconnect_interval_s=0.5)
        async with running(settings) as inbound, \
                Listener(isolated.amqp_url, "wabus.processor", ["message.processed"]) as processed:
            await inbound.post("waha", _message(0))
            await processed.wait_for(1)
            await proxy.cut()
            for n in range(1, 21):
                status, answer, _ = await inbound.post("waha", _message(n))
                assert status == 200 and answer["accepted"] == 1
            await proxy.restore()
            # A processed event whose confirm the cut swallowed is published again, under the same id.
            await processed.wait_for_events(21, timeout=60)
    finally:
        await proxy.close()
    ids = [decode(m.body).data.message.provider_message_id for m in processed.events()]
    assert ids == [f"OUTAGE{n:04d}" for n in range(21)]  # all of them, each processed once, in order


async def _accepted(inbound, body: bytes) -> bool:
    status, _, _ = await inbound.post("waha", body)
    return status == 200
