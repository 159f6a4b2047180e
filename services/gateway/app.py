from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from shared.events.batching import GroupCommit
from shared.events.jobs import Periodic
from shared.events.runtime import METRICS, POOL, STOPPING, ServiceSpec
from shared.events.settings import CommonSettings
from shared.events.topology import Subscription

from . import api, jobs, stream
from .ingest import record_webhooks
from .repository import tenant_directory
from .settings import GatewaySettings


def build(common: CommonSettings, own: GatewaySettings) -> ServiceSpec:
    async def gateway(app: web.Application) -> AsyncIterator[None]:
        commit = GroupCommit(app[POOL], record_webhooks, max_batch=own.max_batch, acquire_timeout_s=2.0)
        app[api.GATEWAY] = api.Gateway(
            settings=own, tenants=tenant_directory(app[POOL], own.tenant_cache_s), commit=commit,
            metrics=api.WebhookMetrics(app[METRICS].registry),
        )
        hub = stream.StreamHub(app[POOL], common.database_url, "gateway", app[METRICS].registry,
                               connect_timeout_s=common.connect_timeout_s)
        app[stream.HUB] = hub
        commit.start()
        await hub.start(app[STOPPING])
        yield
        await hub.stop()
        await commit.stop()

    return ServiceSpec(
        name="gateway",
        port=own.port,
        schema="gateway",
        migrations=Path(__file__).parent / "migrations",
        routes=[*api.routes, *stream.routes],
        contexts=[gateway],
        subscriptions=[
            # What browsers may follow, kept for the stream hubs of every gateway replica.
            Subscription("gateway.stream.processor", "wabus.processor", ["message.processed"],
                         stream.record_stream_events, handles_many=True),
            # In publishing order: a waiting-room screen must never show an older count after a newer one.
            Subscription("gateway.stream.scheduler", "wabus.scheduler",
                         ["queue.opened", "queue.closed", "queue.status.changed", "ticket.issued", "turn.reached"],
                         stream.record_stream_events, handles_many=True, prefetch=1, single_active=True),
            Subscription("gateway.stream.notifier", "wabus.notifier", ["notification.status", "broadcast.status"],
                         stream.record_stream_events, handles_many=True),
        ],
        jobs=[
            Periodic("prune_received_webhooks", 3600.0, jobs.prune_received_webhooks(own.received_retention_days)),
            Periodic("prune_stream_events", 600.0, jobs.prune_stream_events(own.stream_retention_h)),
        ],
        max_body_bytes=own.max_body_bytes,
    )
