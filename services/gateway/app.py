from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from shared.events.batching import GroupCommit
from shared.events.jobs import Periodic
from shared.events.runtime import AMQP, METRICS, POOL, STOPPING, ServiceSpec
from shared.events.settings import CommonSettings

from . import api, jobs, stream
from .ingest import record_webhooks
from .repository import tenant_directory
from .settings import GatewaySettings


def build(common: CommonSettings, own: GatewaySettings) -> ServiceSpec:
    async def gateway(app: web.Application) -> AsyncIterator[None]:
        commit = GroupCommit(app[POOL], record_webhooks, max_batch=own.max_batch, acquire_timeout_s=2.0,
                             transaction=False)
        app[api.GATEWAY] = api.Gateway(
            settings=own, tenants=tenant_directory(app[POOL], own.tenant_cache_s), commit=commit,
            metrics=api.WebhookMetrics(app[METRICS].registry),
        )
        await stream.declare_stream(app[AMQP], retention_h=own.stream_retention_h, max_bytes=own.stream_max_bytes)
        hub = stream.StreamHub(common.amqp_url, app[METRICS].registry, connect_timeout_s=common.connect_timeout_s)
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
        jobs=[
            Periodic("prune_received_webhooks", 3600.0, jobs.prune_received_webhooks(own.received_retention_days)),
        ],
        max_body_bytes=own.max_body_bytes,
    )
