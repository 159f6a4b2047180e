"""Tenant API keys: who is calling, for which tenant, with what role.

A key reads `wbk_<key id>_<secret>`. Every service keeps the same rows in its own `api_keys`
table (written by `wabus keys`), and checks a key against its own copy: no service reads another's.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from enum import IntEnum

import asyncpg
from aiohttp import web

from . import db
from .cache import ReadThrough
from .http import problem

PREFIX = "wbk"


class Role(IntEnum):
    VIEWER = 1
    STAFF = 2
    ADMIN = 3


@dataclass(frozen=True)
class Principal:
    key_id: str
    tenant_id: str
    role: Role


def new_key() -> tuple[str, str, bytes]:
    """(the key to hand out, its id, the hash to store)."""
    key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(24)
    return f"{PREFIX}_{key_id}_{secret}", key_id, _hash(secret)


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _presented(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value:
        return value.strip()
    # Browsers cannot set headers on an EventSource or WebSocket: a query parameter is accepted too.
    return request.headers.get("X-Api-Key") or request.query.get("api_key")


class Unauthorized(web.HTTPUnauthorized):
    def __init__(self, reason: str):
        super().__init__(text=problem(401, "unauthorized", reason=reason).text, content_type="application/json",
                         headers={"WWW-Authenticate": 'Bearer realm="wabus"'})


class Forbidden(web.HTTPForbidden):
    def __init__(self, reason: str):
        super().__init__(text=problem(403, "forbidden", reason=reason).text, content_type="application/json")


class ApiKeys:
    """Checks keys against this service's table, through a short cache (revocation takes effect within it)."""

    def __init__(self, pool: asyncpg.Pool, cache_s: float = 5.0):
        self._pool = pool
        self._rows: ReadThrough[str, asyncpg.Record | None] = ReadThrough(self._load, cache_s)

    async def authenticate(self, request: web.Request, minimum: Role) -> Principal:
        key = _presented(request)
        if not key:
            raise Unauthorized("send an API key: Authorization: Bearer <key>")
        prefix, _, rest = key.partition("_")
        key_id, _, secret = rest.partition("_")
        if prefix != PREFIX or not key_id or not secret:
            raise Unauthorized("malformed API key")
        row = await self._rows.get(key_id)
        if row is None or row["revoked_at"] is not None or not hmac.compare_digest(row["secret_hash"], _hash(secret)):
            raise Unauthorized("unknown or revoked API key")
        principal = Principal(key_id, row["tenant_id"], Role[row["role"].upper()])
        if principal.role < minimum:
            raise Forbidden(f"this needs the {minimum.name.lower()} role; the key has {principal.role.name.lower()}")
        return principal

    async def _load(self, key_id: str) -> asyncpg.Record | None:
        async with db.connection(self._pool, acquire_timeout=2.0) as conn:  # one statement: no transaction
            return await conn.fetchrow(
                "SELECT tenant_id, role, secret_hash, revoked_at FROM api_keys WHERE key_id = $1", key_id)


async def add_key(conn: asyncpg.Connection, *, key_id: str, secret_hash: bytes, tenant_id: str, role: Role,
                  label: str | None) -> None:
    await conn.execute(
        "INSERT INTO api_keys (key_id, secret_hash, tenant_id, role, label) VALUES ($1, $2, $3, $4, $5)",
        key_id, secret_hash, tenant_id, role.name.lower(), label,
    )


async def revoke_key(conn: asyncpg.Connection, key_id: str) -> bool:
    return bool(await conn.fetchval(
        "UPDATE api_keys SET revoked_at = now() WHERE key_id = $1 AND revoked_at IS NULL RETURNING true", key_id))


async def list_keys(conn: asyncpg.Connection, tenant_id: str | None = None) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT key_id, tenant_id, role, label, created_at, revoked_at FROM api_keys"
        " WHERE $1::text IS NULL OR tenant_id = $1 ORDER BY tenant_id, created_at", tenant_id)
