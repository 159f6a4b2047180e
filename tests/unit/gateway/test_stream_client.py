"""A browser's client of the stream: its catch-up and the hub's events meet without a gap or a repeat."""

import asyncio
import json

import pytest
from prometheus_client import CollectorRegistry

from services.gateway.stream import GAP_TOPIC, Client, Filter, Item, StreamHub, _Reader, parse_id


def _item(offset: int, event_id: str | None = None, tenant: str = "t1") -> Item:
    return Item(offset, event_id or f"e{offset}", tenant, "message.processed", None, {"n": offset})


def _client(last_id: str | None = None) -> Client:
    return Client("t1", Filter(last_event_id=last_id))


async def _drain(client: Client) -> list[int | None]:
    given = []
    while True:
        try:
            item = await client.next(0.05)
        except TimeoutError:
            return given
        given.append(None if item is None else item.offset)
        if item is None:
            return given


async def test_the_catch_up_comes_first_and_what_both_hold_is_given_once():
    client = _client("4")
    for offset in (5, 6, 7):
        client.replayed.put_nowait(_item(offset))
    client.met_the_hub(7)  # the hub's first event after the join; the catch-up read up to 7 too
    for offset in (7, 8):
        client.offer(_item(offset))
    client.caught_up = True
    client.replay_done.set()
    assert await _drain(client) == [5, 6, 7, 8]


async def test_a_catch_up_cut_short_ends_the_stream_rather_than_skip_to_the_hubs_events():
    client = _client("4")
    client.replayed.put_nowait(_item(5))
    client.met_the_hub(9)  # offsets 6-8 are still to be read when the client is let go
    client.offer(_item(9))
    client.stop_replay()  # let go: too far behind, broker gone, or the gateway stopping
    # Given 5, then the end: the browser reconnects from 5 and gets 6-8, never jumps to 9.
    assert await _drain(client) == [5, None]


async def test_a_catch_up_waiting_at_the_logs_end_yields_to_the_hub():
    client = _client("4")
    client.replay = asyncio.create_task(asyncio.sleep(3600))  # parked, waiting for offset 5
    client.met_the_hub(5)
    client.offer(_item(5))
    assert client.caught_up and client.replay_done.is_set()
    assert await _drain(client) == [5]
    await asyncio.sleep(0)
    assert client.replay.cancelled()


async def test_an_event_published_twice_is_given_once():
    client = _client()
    client.offer(_item(1, "same"))
    client.offer(_item(2, "same"))
    client.offer(_item(3))
    assert await _drain(client) == [1, 3]


def test_ids():
    assert parse_id("0") == 0 and parse_id(str(2**63 - 2)) == 2**63 - 2
    for wrong in (str(2**63 - 1), "-1", "abc", "1.2.3", ""):
        with pytest.raises(ValueError):
            parse_id(wrong)
    # An id of the gateway before the log goes on from now.
    assert Filter(last_event_id="7331.12").last_event_id is None


async def test_a_client_still_catching_up_is_not_cut_loose_when_the_hubs_events_fill_its_buffer(monkeypatch):
    monkeypatch.setattr("services.gateway.stream.CLIENT_BUFFER", 2)
    client = _client("4")
    client.met_the_hub(10)
    assert client.offer(_item(10)) and client.offer(_item(11)) and not client.offer(_item(12))
    client.catch_up_to(_item(12))
    # The catch-up now reads on to 12 (10 and 11 included); the hub's events start at 12.
    assert client.live_from == 12 and not client.caught_up
    assert [client.queue.get_nowait().offset] == [12]


class _Delivered:
    """What a catch-up reads from the log: its offset header, an event body, an ack."""

    def __init__(self, offset: int, tenant: str = "t1"):
        self.headers = {"x-stream-offset": offset}
        self.body = json.dumps({"id": f"e{offset}", "tenant_id": tenant, "type": "message.processed",
                                "data": {}}).encode()

    async def ack(self) -> None:
        pass


async def _replayed_into(last_id: str, offsets: list[int]) -> Client:
    """A client after its catch-up read these offsets and met the hub right after the last."""
    hub = StreamHub("amqp://unused", CollectorRegistry())
    client = _client(last_id)
    reader = _Reader(channel=None, queue=None, consumer_tag="", inbox=asyncio.Queue())
    for offset in offsets:
        reader.inbox.put_nowait(_Delivered(offset))
    client.met_the_hub(offsets[-1] + 1)  # the hub's events take over after the last of them
    reader.inbox.put_nowait(_Delivered(offsets[-1] + 1))
    await hub._replay(client, reader)
    return client


async def _replayed(last_id: str, offsets: list[int]) -> list[tuple[int, str]]:
    client = await _replayed_into(last_id, offsets)
    given = []
    while not client.replayed.empty():
        item = client.replayed.get_nowait()
        given.append((item.offset, item.topic))
    return given


async def test_a_catch_up_from_an_id_older_than_the_log_says_what_was_dropped():
    client = await _replayed_into("4", [40, 41])
    client.caught_up = True
    given = [await client.next(0.05) for _ in range(3)]
    assert [(i.offset, i.topic) for i in given] == [(39, GAP_TOPIC), (40, "message.processed"),
                                                     (41, "message.processed")]
    gap = given[0]
    # Its id is the last one missed: a browser reconnecting with it resumes at the oldest event kept.
    assert gap.id == "39" and json.loads(gap.body) == {"missed_from": "5", "missed_to": "39"}


async def test_a_catch_up_the_log_still_holds_has_no_gap():
    # The broker starts a reader at its chunk's first offset: events before the id come first, and are no gap.
    assert await _replayed("4", [3, 4, 5, 6]) == [(o, "message.processed") for o in (3, 4, 5, 6)]
    assert await _replayed("4", [5, 6]) == [(5, "message.processed"), (6, "message.processed")]
