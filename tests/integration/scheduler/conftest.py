"""The scheduler on the real broker and database, with tenant keys written straight into its schema."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import aiohttp
import asyncpg
import pytest

from services.scheduler import app as scheduler_app
from services.scheduler.settings import SchedulerSettings
from shared.events import auth
from shared.events.runtime import serve

ROLES = ("admin", "staff", "viewer")

OPD = {"code": "OPD", "name": "Outpatients", "timezone": "Africa/Casablanca", "phone_region": "MA"}
LAB = {"code": "LAB", "name": "Laboratory", "timezone": "Africa/Casablanca", "phone_region": "MA"}


@dataclass
class Keys:
    """API keys by tenant and role: keys["clinic-a"]["staff"]."""

    by_tenant: dict[str, dict[str, str]] = field(default_factory=dict)

    def __getitem__(self, tenant: str) -> dict[str, str]:
        return self.by_tenant[tenant]


async def add_keys(database_url: str, tenants=("clinic-a", "clinic-b"), schemas=("scheduler",)) -> Keys:
    """The same keys in each schema, as `wabus keys add` writes them (the services must have migrated)."""
    keys = Keys()
    conn = await asyncpg.connect(database_url)
    try:
        for tenant in tenants:
            for role in ROLES:
                key, key_id, secret_hash = auth.new_key()
                for schema in schemas:
                    await conn.execute(f'SET search_path TO "{schema}"')
                    await auth.add_key(conn, key_id=key_id, secret_hash=secret_hash, tenant_id=tenant,
                                       role=auth.Role[role.upper()], label=None)
                keys.by_tenant.setdefault(tenant, {})[role] = key
    finally:
        await conn.close()
    return keys


class Staff:
    """A client of the staff API holding one key."""

    def __init__(self, http: aiohttp.ClientSession, url: str, key: str | None):
        self.http, self.url, self.key = http, url, key

    def as_(self, key: str | None) -> Staff:
        return Staff(self.http, self.url, key)

    async def call(self, method: str, path: str, body: object | None = None, **params):
        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        async with self.http.request(method, self.url + path, json=body, headers=headers,
                                     params=params or None) as response:
            payload = await response.json(content_type=None) if response.status != 204 else None
            return response.status, payload


@contextlib.asynccontextmanager
async def scheduler(settings, **own):
    async with serve(settings, scheduler_app.build(settings, SchedulerSettings(port=0, shards=2, **own))) as running:
        yield running


@contextlib.asynccontextmanager
async def staff_api(isolated, **own):
    """One scheduler replica, keys for clinic-a and clinic-b, and a client with clinic-a's admin key."""
    async with scheduler(isolated.settings(), **own) as running, aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=30)) as http:
        keys = await add_keys(isolated.database_url)
        yield Staff(http, running.url, keys["clinic-a"]["admin"]), keys, running


async def rows(database_url: str, sql: str, *args):
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


@pytest.fixture
def departments():
    return OPD, LAB
