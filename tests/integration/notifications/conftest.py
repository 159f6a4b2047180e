"""The notifier on the real broker and database, sending to the fake provider over loopback HTTP;
the gateway takes the fake's acks as it takes the real ones."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass

import aiohttp
import asyncpg

from services.gateway import app as gateway_app
from services.gateway.settings import GatewaySettings
from services.notifier import app as notifier_app
from services.notifier.fake_provider import FakeProvider, running_fake_provider
from services.notifier.handlers import add_sender
from services.notifier.settings import NotifierSettings
from shared.events.catalog import Provider
from shared.events.runtime import serve
from tests.integration.inbound.conftest import SECRETS, TENANTS, add_tenants
from tests.integration.scheduler.conftest import add_keys

TENANT = TENANTS[Provider.WAHA]  # clinic-waha, session "default", region MA

FAST = dict(provider=Provider.WAHA, rate_per_s=0, max_in_flight_per_session=4, send_timeout_s=1.5,
            retry_base_s=0.2, retry_max_s=2, reconcile_after_s=0.5, session_poll_s=0.5, idle_poll_s=0.2,
            status_check_timeout_s=1.0, gauges_every_s=0.5, phone_workers=0)


@dataclass
class Notifier:
    url: str
    fake: FakeProvider
    http: aiohttp.ClientSession
    keys: dict[str, str]  # role → key, for clinic-waha
    database_url: str

    async def call(self, method: str, path: str, body: object | None = None, *, role: str = "staff",
                   headers: dict[str, str] | None = None, **params):
        sent = {"Authorization": f"Bearer {self.keys[role]}", **(headers or {})}
        async with self.http.request(method, self.url + path, json=body, headers=sent, params=params or None) as r:
            return r.status, await r.json(content_type=None)

    async def rows(self, sql: str, *args):
        conn = await asyncpg.connect(self.database_url, server_settings={"search_path": "notifier"})
        try:
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()


async def add_senders(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        for provider, tenant in TENANTS.items():
            await add_sender(conn, tenant_id=tenant, provider=provider.value,
                             session="123456123" if provider is Provider.META else "default",
                             default_region="MA", locale="fr")
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def notifier_with_fake(isolated, *, replicas: int = 1, **own):
    """Gateway, notifier and the fake WAHA (posting signed acks to the gateway), tenants and keys in place."""
    await add_tenants(isolated.database_url)
    await add_senders(isolated.database_url)
    settings = isolated.settings()
    async with contextlib.AsyncExitStack() as stack:
        gateway = await stack.enter_async_context(serve(settings, gateway_app.build(settings, GatewaySettings(port=0))))
        fake = await stack.enter_async_context(running_fake_provider(
            webhook_url=f"{gateway.url}/webhooks/waha/{TENANT}", webhook_secret=SECRETS[Provider.WAHA],
            ack_delay_s=0.1))
        spec = notifier_app.build(settings, NotifierSettings(port=0, provider_url=fake.url, **{**FAST, **own}))
        notifier = await stack.enter_async_context(serve(settings, spec))
        for _ in range(replicas - 1):
            await stack.enter_async_context(serve(settings, spec))
        http = await stack.enter_async_context(aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)))
        keys = await add_keys(isolated.database_url, tenants=(TENANT,), schemas=("notifier",))
        yield Notifier(notifier.url, fake, http, keys[TENANT], isolated.database_url)


def body(response) -> dict:
    return json.loads(response.body)
