import importlib.metadata
from pathlib import Path

from shared.events.asyncapi import document, render
from shared.events.catalog import CATALOG

DOC = Path(__file__).resolve().parents[2] / "docs" / "asyncapi.json"


def test_the_committed_document_is_what_the_code_generates():
    assert DOC.read_text() == render(importlib.metadata.version("wabus")), "run `wabus asyncapi` and commit"


def test_every_event_has_its_channel_on_its_exchange():
    doc = document("test")
    for route in CATALOG.values():
        channel = doc["channels"][f"{route.exchange}/{route.routing_key}"]
        assert channel["address"] == route.routing_key
        assert channel["bindings"]["amqp"]["exchange"]["name"] == route.exchange
