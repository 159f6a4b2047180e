"""The AsyncAPI document of every event wabus publishes, generated from the catalogue itself."""

from __future__ import annotations

import json
from typing import Any

from pydantic.json_schema import models_json_schema

from .catalog import CATALOG, INTENT_HEADER, REPLY_HEADER, MessageProcessed, Route
from .envelope import Envelope

_REF = "#/components/schemas/{model}"


def _message_name(route: Route) -> str:
    return route.model.__name__ if route.model.version == 1 else f"{route.model.__name__}V{route.model.version}"


def document(version: str) -> dict[str, Any]:
    routes = sorted(CATALOG.values(), key=lambda r: (r.exchange, r.routing_key, r.model.version))
    keyed, schemas = models_json_schema(
        [(Envelope[r.model], "validation") for r in routes], ref_template=_REF,  # type: ignore[name-defined]
    )
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for route in routes:
        name = _message_name(route)
        channel_id = f"{route.exchange}/{route.routing_key}"
        envelope_ref = keyed[(Envelope[route.model], "validation")]["$ref"]  # type: ignore[name-defined]
        messages[name] = {
            "name": route.routing_key,
            "title": route.model.__name__,
            "summary": (route.model.__doc__ or "").strip().split("\n")[0] or None,
            "contentType": "application/json",
            "payload": {"$ref": envelope_ref},
            "headers": {"type": "object", "properties": {
                "wabus-shard-key": {"type": "string", "description": "tenant:chat, where order per chat matters"},
                "wabus-shard": {"type": "string", "description": "the shard slot (0-63) of wabus-shard-key"},
                **({
                    INTENT_HEADER: {"type": "string", "description": "the recognised intent's name, if any"},
                    REPLY_HEADER: {"type": "string", "const": "yes", "description": "set when the bot has a reply"},
                } if route.model is MessageProcessed else {}),
            }},
            "bindings": {"amqp": {"messageType": route.routing_key, "deliveryMode": 2, "bindingVersion": "0.3.0"}},
        }
        channels.setdefault(channel_id, {
            "address": route.routing_key,
            "messages": {},
            "bindings": {"amqp": {
                "is": "routingKey",
                "exchange": {"name": route.exchange, "type": "topic", "durable": True, "autoDelete": False, "vhost": "/"},
                "bindingVersion": "0.3.0",
            }},
        })["messages"][name] = {"$ref": f"#/components/messages/{name}"}
        operations[f"publish{name}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{_escape(channel_id)}"},
            "summary": f"published on {route.exchange} with routing key {route.routing_key}",
            "messages": [{"$ref": f"#/channels/{_escape(channel_id)}/messages/{name}"}],
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "wabus events",
            "version": version,
            "description": (
                "Every event wabus publishes. Each service publishes on its own durable topic exchange, "
                "wabus.<service>, with the event type as routing key. To receive events, declare a queue of "
                "your own, bind it to the exchange with the routing keys you want, and ack each message after "
                "handling it. Delivery is at least once: deduplicate on the envelope id (AMQP message_id)."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {"rabbitmq": {"host": "127.0.0.1:5672", "protocol": "amqp", "protocolVersion": "0-9-1",
                                 "description": "the broker named by WABUS_AMQP_URL"}},
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas.get("$defs", {})},
    }


def _escape(pointer_part: str) -> str:
    return pointer_part.replace("~", "~0").replace("/", "~1")


def render(version: str) -> str:
    return json.dumps(document(version), indent=2, ensure_ascii=False, sort_keys=False) + "\n"
