"""Browsers follow their tenant's events over SSE and WebSocket, and catch up after reconnecting."""

import asyncio
import json
import sys

import aiohttp

from services.gateway import stream
from tests.support import Listener

from .conftest import running
from .test_processing import _key, text


async def _sse_events(response: aiohttp.ClientResponse, count: int, timeout: float = 20) -> list[dict]:
    """Read `count` events off an SSE stream: {id, event, data}."""
    events, current = [], {}

    async def read():
        async for raw in response.content:
            line = raw.decode().rstrip("\n")
            if not line:
                if "data" in current:
                    events.append(dict(current))
                    if len(events) == count:
                        return
                current.clear()
            elif not line.startswith(":"):
                field, _, value = line.partition(": ")
                current[field] = value

    await asyncio.wait_for(read(), timeout)
    return events


async def test_sse_and_websocket_stream_a_tenants_own_events_and_catch_up_after_reconnect(isolated, tenants):
    waha_key = await _key(isolated, "clinic-waha", "viewer")
    meta_key = await _key(isolated, "clinic-meta", "viewer")
    async with running(isolated.settings()) as inbound, \
            Listener(isolated.amqp_url, "wabus.processor", ["message.processed"]) as processed:
        url = inbound.gateway_url
        async with inbound.http.get(f"{url}/v1/stream") as r:
            assert r.status == 401
        async with inbound.http.get(f"{url}/v1/stream", params={"topics": "message.processed,gossip"},
                                    headers={"Authorization": f"Bearer {waha_key}"}) as r:
            assert r.status == 422 and (await r.json())["field"] == "topics"

        sse = await inbound.http.get(f"{url}/v1/stream", params={"topics": "message.processed"},
                                     headers={"Authorization": f"Bearer {waha_key}"})
        other = await inbound.http.get(f"{url}/v1/stream", headers={"Authorization": f"Bearer {meta_key}"})
        ws = await inbound.http.ws_connect(f"{url}/v1/ws", params={"api_key": waha_key})
        await asyncio.sleep(0.2)  # both are registered with the hub

        await inbound.post("waha", text("212600000321", 1, "first"))
        (first,) = await _sse_events(sse, 1)
        assert first["event"] == "message.processed"
        assert json.loads(first["data"])["data"]["message"]["text"] == "first"
        frame = json.loads((await ws.receive(timeout=20)).data)
        assert frame["id"] == first["id"] and frame["event"]["tenant_id"] == "clinic-waha"
        sse.close()
        await ws.close()

        # While this browser is away, three more messages come in.
        for n in range(2, 5):
            await inbound.post("waha", text("212600000321", n, f"message {n}"))
        await processed.wait_for(4)
        await inbound.post("meta", _meta_message())
        (meta_event,) = await _sse_events(other, 1)
        assert json.loads(meta_event["data"])["tenant_id"] == "clinic-meta"  # never the WAHA tenant's
        other.close()

        again = await inbound.http.get(f"{url}/v1/stream", params={"topics": "message.processed"},
                                       headers={"Authorization": f"Bearer {waha_key}", "Last-Event-ID": first["id"]})
        missed = await _sse_events(again, 3)
        assert [json.loads(e["data"])["data"]["message"]["text"] for e in missed] == [
            "message 2", "message 3", "message 4"]
        again.close()


def _meta_message() -> bytes:
    from tests.samples import sample_bytes

    return sample_bytes("meta/messages.text.json")


async def test_a_long_absence_is_caught_up_a_few_at_a_time(isolated, tenants, monkeypatch):
    monkeypatch.setattr(stream, "REPLAY_PREFETCH", 2)
    key = await _key(isolated, "clinic-waha", "viewer")
    async with running(isolated.settings()) as inbound, \
            Listener(isolated.amqp_url, "wabus.processor", ["message.processed"]) as processed:
        url, auth = inbound.gateway_url, {"Authorization": f"Bearer {key}"}
        sse = await inbound.http.get(f"{url}/v1/stream", params={"topics": "message.processed"}, headers=auth)
        await asyncio.sleep(0.2)
        await inbound.post("waha", text("212600000321", 1, "seen"))
        (seen,) = await _sse_events(sse, 1)
        sse.close()
        for n in range(2, 9):
            await inbound.post("waha", text("212600000321", n, f"missed {n}"))
        await processed.wait_for(8)
        again = await inbound.http.get(f"{url}/v1/stream", params={"topics": "message.processed"},
                                       headers={**auth, "Last-Event-ID": seen["id"]})
        missed = await _sse_events(again, 7)
        assert [json.loads(e["data"])["data"]["message"]["text"] for e in missed] == [
            f"missed {n}" for n in range(2, 9)]
        again.close()


async def test_a_stream_that_never_opens_leaves_no_client_behind(isolated, tenants):
    key = await _key(isolated, "clinic-waha", "viewer")
    async with running(isolated.settings()) as inbound:
        url = inbound.gateway_url
        for _ in range(3):  # a plain GET, not a WebSocket upgrade
            async with inbound.http.get(f"{url}/v1/ws", params={"api_key": key}) as r:
                assert r.status == 400
        for wrong in (str(2**64), str(2**63 - 1), "abc", "-1", "1.2.3"):
            async with inbound.http.get(f"{url}/v1/stream", headers={"Authorization": f"Bearer {key}",
                                                                     "Last-Event-ID": wrong}) as r:
                assert r.status == 422 and (await r.json())["field"] == "last_event_id"
        async with inbound.http.get(f"{url}/metrics") as r:
            assert 'wabus_stream_clients{service="gateway"} 0.0' in await r.text()


async def test_a_revoked_key_loses_its_open_stream(isolated, tenants, monkeypatch):
    monkeypatch.setattr(stream, "KEY_CHECK_S", 0.5)
    key = await _key(isolated, "clinic-waha", "viewer")
    async with running(isolated.settings()) as inbound:
        url = inbound.gateway_url
        sse = await inbound.http.get(f"{url}/v1/stream", headers={"Authorization": f"Bearer {key}"})
        ws = await inbound.http.ws_connect(f"{url}/v1/ws", params={"api_key": key}, autoclose=False)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.cli", "keys", "revoke", key.split("_")[1], env=isolated.env(),
            stdout=asyncio.subprocess.DEVNULL)
        assert await asyncio.wait_for(proc.wait(), timeout=60) == 0
        # Within the keys' cache (5 s) and a check, both streams end.
        _, closing = await asyncio.gather(asyncio.wait_for(sse.content.read(), timeout=15), ws.receive(timeout=15))
        assert sse.content.at_eof()
        assert closing.type is aiohttp.WSMsgType.CLOSE and closing.data == 4001
        async with inbound.http.get(f"{url}/v1/stream", headers={"Authorization": f"Bearer {key}"}) as r:
            assert r.status == 401


async def _stream_consumers(isolated) -> int:
    # list_queues, not list_consumers: RabbitMQ 3.10 lists no consumers of a stream there.
    listed = await isolated.broker.rabbitmqctl("list_queues", "--vhost", isolated.vhost, "--quiet",
                                               "--no-table-headers", "name", "consumers")
    counts = dict(line.split() for line in listed.splitlines() if line.strip())
    return int(counts.get(stream.STREAM_QUEUE, 0))


async def test_the_log_is_read_only_while_a_browser_follows(isolated, tenants):
    key = await _key(isolated, "clinic-waha", "viewer")
    async with running(isolated.settings()) as inbound:
        url, auth = inbound.gateway_url, {"Authorization": f"Bearer {key}"}
        assert await _stream_consumers(isolated) == 0
        sse = await inbound.http.get(f"{url}/v1/stream", params={"topics": "message.processed"}, headers=auth)
        assert await _stream_consumers(isolated) == 1
        await inbound.post("waha", text("212600000321", 1, "followed"))
        (seen,) = await _sse_events(sse, 1)
        sse.close()
        for _ in range(20):
            if await _stream_consumers(isolated) == 0:
                break
            await asyncio.sleep(0.2)
        assert await _stream_consumers(isolated) == 0
        # Kept meanwhile all the same: a browser back with its last id gets it.
        await inbound.post("waha", text("212600000321", 2, "while nobody followed"))
        async with inbound.http.get(f"{url}/v1/stream", params={"topics": "message.processed"},
                                    headers={**auth, "Last-Event-ID": seen["id"]}) as again:
            (event,) = await _sse_events(again, 1)
            assert json.loads(event["data"])["data"]["message"]["text"] == "while nobody followed"


async def test_an_id_of_the_gateway_before_the_log_goes_on_from_now(isolated, tenants):
    # A browser open across the upgrade: refusing its id would stop its EventSource for good.
    key = await _key(isolated, "clinic-waha", "viewer")
    async with running(isolated.settings()) as inbound:
        sse = await inbound.http.get(f"{inbound.gateway_url}/v1/stream", params={"topics": "message.processed"},
                                     headers={"Authorization": f"Bearer {key}", "Last-Event-ID": "7331.12"})
        assert sse.status == 200
        await asyncio.sleep(0.2)
        await inbound.post("waha", text("212600000321", 1, "after the upgrade"))
        (event,) = await _sse_events(sse, 1)
        assert json.loads(event["data"])["data"]["message"]["text"] == "after the upgrade"
        sse.close()


async def test_a_browser_cut_off_with_the_broker_catches_up_on_what_it_missed(isolated, tenants):
    key = await _key(isolated, "clinic-waha", "viewer")
    async with running(isolated.settings()) as inbound, \
            Listener(isolated.amqp_url, "wabus.processor", ["message.processed"]) as processed:
        url, auth = inbound.gateway_url, {"Authorization": f"Bearer {key}"}
        sse = await inbound.http.get(f"{url}/v1/stream", params={"topics": "message.processed"}, headers=auth)
        await asyncio.sleep(0.2)
        await inbound.post("waha", text("212600000321", 1, "before"))
        (seen,) = await _sse_events(sse, 1)
        await processed.wait_for(1)

        await isolated.cut_connections()
        # The hub can no longer promise every event: the stream ends, the browser reconnects.
        await asyncio.wait_for(sse.content.read(), timeout=20)
        assert sse.content.at_eof()
        for n in (2, 3):
            await inbound.post("waha", text("212600000321", n, f"missed {n}"))
        async with inbound.http.get(f"{url}/v1/stream", params={"topics": "message.processed"},
                                    headers={**auth, "Last-Event-ID": seen["id"]}) as again:
            assert again.status == 200, await again.text()
            missed = await _sse_events(again, 2, timeout=60)
        assert [json.loads(e["data"])["data"]["message"]["text"] for e in missed] == ["missed 2", "missed 3"]
