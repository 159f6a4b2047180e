"""An outside client binds its own queue as the AsyncAPI document says, and gets what it promises."""

import json
from pathlib import Path

import aio_pika
import jsonschema

from tests.samples import sample_bytes

from .conftest import running

DOC = json.loads((Path(__file__).resolve().parents[3] / "docs" / "asyncapi.json").read_text())


async def test_a_client_bound_as_documented_receives_processed_messages_that_match_the_document(isolated, tenants):
    channel_doc = DOC["channels"]["wabus.processor/message.processed"]
    exchange = channel_doc["bindings"]["amqp"]["exchange"]["name"]
    routing_key = channel_doc["address"]
    message_doc = DOC["components"]["messages"]["MessageProcessed"]
    schema = {**message_doc["payload"], "components": DOC["components"]}

    async with running(isolated.settings()) as inbound:
        # The client's own durable queue, as a CRM or inbox would declare it.
        connection = await aio_pika.connect(isolated.amqp_url, timeout=10)
        try:
            channel = await connection.channel()
            queue = await channel.declare_queue("crm.processed-messages", durable=True,
                                                arguments={"x-queue-type": "quorum"})
            await queue.bind(exchange, routing_key=routing_key)
            status, _, _ = await inbound.post("meta", sample_bytes("meta/messages.text.json"))
            assert status == 200
            async with queue.iterator(timeout=30) as messages:
                async for message in messages:
                    async with message.process():
                        body = json.loads(message.body)
                        jsonschema.validate(body, schema)
                        assert message.type == message_doc["bindings"]["amqp"]["messageType"]
                        assert message.content_type == message_doc["contentType"]
                        assert message.message_id == body["id"]
                        assert message.headers["wabus-shard-key"] == "clinic-meta:16315551181@c.us"
                        assert body["data"]["message"]["text"] == "this is a text message"
                        break
        finally:
            await connection.close()


def test_the_documented_schema_rejects_what_is_not_a_processed_message():
    schema = {**DOC["components"]["messages"]["MessageProcessed"]["payload"], "components": DOC["components"]}
    try:
        jsonschema.validate({"id": "x", "type": "message.processed"}, schema)
    except jsonschema.ValidationError:
        return
    raise AssertionError("an incomplete envelope passed the documented schema")
