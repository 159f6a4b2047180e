from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from shared.events.runtime import ServiceSpec
from shared.events.settings import CommonSettings
from shared.events.topology import Subscription

from . import api, handlers
from .repository import ProcessorUnitOfWork
from .settings import ProcessorSettings


def build(common: CommonSettings, own: ProcessorSettings) -> ServiceSpec:
    return ServiceSpec(
        name="processor",
        port=own.port,
        schema="processor",
        migrations=Path(__file__).parent / "migrations",
        unit_of_work=ProcessorUnitOfWork,
        subscriptions=[
            # Sharded by chat, each shard applied in arrival order: a chat's messages keep their order.
            Subscription("processor.messages", "wabus.gateway", ["whatsapp.message.received"],
                         partial(handlers.process_messages, clock=lambda: datetime.now(UTC)), handles_many=True,
                         shards=own.shards),
        ],
        routes=api.routes,
    )
