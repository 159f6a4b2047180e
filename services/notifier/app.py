import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from aiohttp import web

from shared.events.jobs import Periodic
from shared.events.runtime import METRICS, POOL, STOPPING, ServiceSpec
from shared.events.settings import CommonSettings
from shared.events.topology import Subscription

from . import api, handlers, jobs
from .numbers import Numbers
from .providers import build_provider
from .sending import Sender, SenderMetrics
from .settings import NotifierSettings

_SCHEDULER_NOTICES = ["ticket.issued", "ticket.refused", "turn.approaching", "turn.reached", "ticket.ended",
                      "position.reported", "opening.subscribed", "queue.opened"]


def build(common: CommonSettings, own: NotifierSettings) -> ServiceSpec:
    async def sending(app: web.Application) -> AsyncIterator[None]:
        # No connection cap of the client's own: each session's gate already bounds its sends in flight.
        http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=own.send_timeout_s),
                                     connector=aiohttp.TCPConnector(limit=0))
        provider = build_provider(own.provider, http=http, base_url=own.provider_url, api_key=own.provider_api_key,
                                  timeout_s=own.send_timeout_s)
        sender = Sender(pool=app[POOL], dsn=common.database_url, provider=provider, settings=own,
                        metrics=SenderMetrics(app[METRICS].registry), runtime_metrics=app[METRICS],
                        unavailable_backoff_s=common.unavailable_backoff_s, connect_timeout_s=common.connect_timeout_s)
        app[api.SENDER] = sender
        app[api.NUMBERS] = numbers = Numbers(own.phone_workers)
        await numbers.start()
        app[api.GAUGES] = api.NotificationGauges(app[METRICS].registry)
        tasks = [asyncio.create_task(sender.run(app[STOPPING]), name="notifier-sender"),
                 asyncio.create_task(sender.record_outcomes(app[STOPPING]), name="notifier-outcomes"),
                 asyncio.create_task(api.refresh_gauges(app, own.gauges_every_s), name="notifier-gauges")]
        yield
        await asyncio.gather(*tasks)
        await asyncio.gather(http.close(), numbers.close())

    return ServiceSpec(
        name="notifier",
        port=own.port,
        schema="notifier",
        migrations=Path(__file__).parent / "migrations",
        subscriptions=[
            # Sharded by chat: a patient's notices are queued in the order they happened.
            Subscription("notifier.notices", "wabus.scheduler", _SCHEDULER_NOTICES, handlers.notify_patients,
                         shards=own.shards),
            Subscription("notifier.replies", "wabus.processor", ["message.processed"], handlers.reply_to_patient,
                         shards=own.shards, only=handlers.REPLIES),
            Subscription("notifier.receipts", "wabus.gateway", ["whatsapp.message.ack"], handlers.apply_ack),
            Subscription("notifier.sessions", "wabus.gateway", ["whatsapp.session.status"],
                         handlers.note_session_status, single_active=True),
        ],
        routes=api.routes,
        contexts=[sending],
        jobs=[Periodic("prune_idempotency_keys", 3600.0, jobs.prune_idempotency_keys(own.idempotency_retention_h))],
    )
