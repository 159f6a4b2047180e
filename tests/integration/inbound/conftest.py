"""The inbound path on real services: the gateway and processor in this process, real broker and database."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import time
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import pytest

from services.gateway import app as gateway_app
from services.gateway.domain import Tenant
from services.gateway.repository import add_tenant
from services.gateway.settings import GatewaySettings
from services.processor import app as processor_app
from services.processor.settings import ProcessorSettings
from shared.events.catalog import Provider
from shared.events.runtime import serve

SECRETS = {
    Provider.WAHA: "waha-hmac-key-for-tests",
    Provider.EVOLUTION: "evolution-token-for-tests",
    Provider.META: "meta-app-secret-for-tests",
}
TENANTS = {Provider.WAHA: "clinic-waha", Provider.EVOLUTION: "clinic-evo", Provider.META: "clinic-meta"}
# Each tenant's own session as the samples posted to it name it: WAHA `session` (waha/message.text.webjs.json),
# Evolution `instance` (Baileys samples as their bridge posts them), Meta `phone_number_id`
# (meta/messages.text.json). The gateway refuses or skips a webhook for any other.
SESSIONS = {Provider.WAHA: "default", Provider.EVOLUTION: "default", Provider.META: "123456123"}
META_VERIFY_TOKEN = "verify-me"


def signed_headers(provider: Provider, body: bytes) -> dict[str, str]:
    secret = SECRETS[provider].encode()
    if provider is Provider.WAHA:
        return {"X-Webhook-Hmac": hmac.new(secret, body, hashlib.sha512).hexdigest(),
                "X-Webhook-Hmac-Algorithm": "sha512", "X-Webhook-Timestamp": str(int(time.time() * 1000))}
    if provider is Provider.META:
        return {"X-Hub-Signature-256": "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()}
    return {"X-Webhook-Token": SECRETS[provider]}


async def add_tenants(database_url: str) -> None:
    conn = await asyncpg.connect(database_url, server_settings={"search_path": "gateway"})
    try:
        for provider, tenant_id in TENANTS.items():
            await add_tenant(conn, Tenant(tenant_id, provider, SESSIONS[provider], SECRETS[provider],
                                          META_VERIFY_TOKEN if provider is Provider.META else None, "MA", "fr"))
    finally:
        await conn.close()


def via(url: str, port: int) -> str:
    """The same URL, through a local proxy port."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))


@dataclass
class Inbound:
    gateway_url: str
    processor_urls: list[str]
    http: aiohttp.ClientSession

    async def post(self, provider: str, body: bytes, *, tenant: str | None = None, sign: bool = True,
                   headers: dict[str, str] | None = None, content_type: str = "application/json"):
        p = Provider(provider)
        sent = {"Content-Type": content_type, **(signed_headers(p, body) if sign else {}), **(headers or {})}
        url = f"{self.gateway_url}/webhooks/{provider}/{tenant or TENANTS.get(p, 'nobody')}"
        async with self.http.post(url, data=body, headers=sent) as response:
            try:
                payload = await response.json(content_type=None)
            except ValueError:
                payload = await response.text()
            return response.status, payload, response.headers


@contextlib.asynccontextmanager
async def running(settings, *, processors: int = 1, gateway_settings: GatewaySettings | None = None,
                  shards: int = 4):
    """The gateway and `processors` processor replicas, served in this event loop."""
    async with contextlib.AsyncExitStack() as stack:
        processor_urls = []
        for _ in range(processors):
            processor = await stack.enter_async_context(serve(settings, processor_app.build(
                settings, ProcessorSettings(port=0, shards=shards))))
            processor_urls.append(processor.url)
        gateway = await stack.enter_async_context(serve(settings, gateway_app.build(
            settings, gateway_settings or GatewaySettings(port=0))))
        http = await stack.enter_async_context(aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)))
        yield Inbound(gateway.url, processor_urls, http)


@pytest.fixture
async def tenants(isolated):
    await add_tenants(isolated.database_url)


async def rows(database_url: str, sql: str, *args):
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()
