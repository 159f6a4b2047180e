"""The gateway's SQL: tenants, accepted webhooks and known LIDs."""

from __future__ import annotations

import secrets

import asyncpg

from shared.events import db
from shared.events.cache import ReadThrough
from shared.events.catalog import Provider

from .domain import Tenant

_TENANT_COLUMNS = "id, provider, session, webhook_secret, verify_token, default_region, locale"


def _tenant(row: asyncpg.Record) -> Tenant:
    return Tenant(id=row["id"], provider=Provider(row["provider"]), session=row["session"],
                  webhook_secret=row["webhook_secret"], verify_token=row["verify_token"],
                  default_region=row["default_region"], locale=row["locale"])


async def get_tenant(conn: asyncpg.Connection, tenant_id: str) -> Tenant | None:
    row = await conn.fetchrow(f"SELECT {_TENANT_COLUMNS} FROM tenants WHERE id = $1", tenant_id)
    return _tenant(row) if row else None


async def list_tenants(conn: asyncpg.Connection) -> list[Tenant]:
    return [_tenant(r) for r in await conn.fetch(f"SELECT {_TENANT_COLUMNS} FROM tenants ORDER BY id")]


async def add_tenant(conn: asyncpg.Connection, tenant: Tenant) -> None:
    await conn.execute(
        "INSERT INTO tenants (id, provider, session, webhook_secret, verify_token, default_region, locale)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7)",
        tenant.id, tenant.provider.value, tenant.session, tenant.webhook_secret, tenant.verify_token,
        tenant.default_region, tenant.locale,
    )


async def rotate_secret(conn: asyncpg.Connection, tenant_id: str) -> str | None:
    secret = new_secret()
    updated = await conn.fetchval(
        "UPDATE tenants SET webhook_secret = $2, secret_rotated_at = now() WHERE id = $1 RETURNING true",
        tenant_id, secret,
    )
    return secret if updated else None


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def tenant_directory(pool: asyncpg.Pool, ttl_s: float) -> ReadThrough[str, Tenant | None]:
    """Tenants are looked up on every webhook: read through a short cache."""

    async def load(tenant_id: str) -> Tenant | None:
        async with db.connection(pool, acquire_timeout=2.0) as conn:  # one statement: no transaction
            return await get_tenant(conn, tenant_id)

    return ReadThrough(load, ttl_s)


# Admits the events of what is new (outbox.add_admitted): $1 holds their ids, $9 on the keys.
INSERT_RECEIVED = """
INSERT INTO received_webhooks (tenant_id, provider, dedupe_key, event_id)
SELECT * FROM unnest($9::text[], $10::text[], $11::text[], $1::uuid[])
ON CONFLICT DO NOTHING
RETURNING event_id
"""

FIND_LID_PHONES = "SELECT lid, phone FROM lid_phones WHERE tenant_id = $1 AND lid = ANY($2::text[])"

REMEMBER_LID_PHONES = """
INSERT INTO lid_phones (tenant_id, lid, phone)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[])
ON CONFLICT (tenant_id, lid) DO UPDATE SET phone = EXCLUDED.phone, seen_at = now()
"""

PRUNE_RECEIVED = "DELETE FROM received_webhooks WHERE received_at < $1"
