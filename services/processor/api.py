"""Read a tenant's conversations and messages; every query is scoped to the caller's tenant."""

from __future__ import annotations

import base64
import uuid
from datetime import datetime

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.events.auth import Role
from shared.events.http import NotFound, json_row, uuid_or_404
from shared.events.runtime import API_KEYS, POOL
from shared.phones import InvalidPhone, to_e164

_CONVERSATIONS = """
SELECT id, chat_id, provider, is_group, phone, display_name, language, opted_out, created_at, last_message_at
FROM conversations
WHERE tenant_id = $1 AND ($2::text IS NULL OR phone = $2)
  AND ($3::timestamptz IS NULL OR (last_message_at, id) < ($3, $4::uuid))
ORDER BY last_message_at DESC, id DESC LIMIT $5
"""

_CONVERSATION = """
SELECT id, chat_id, provider, is_group, phone, display_name, language, opted_out, created_at, last_message_at
FROM conversations WHERE tenant_id = $1 AND id = $2
"""

_MESSAGES = """
SELECT id, provider_message_id, direction, kind, text, sender, sender_name, participant, media, location, reply_to,
       target_message_id, reaction, intent, language, sent_at, processed_at, edited_at, edit_count, revoked_at,
       reactions
FROM messages
WHERE tenant_id = $1 AND conversation_id = $2
  AND ($3::timestamptz IS NULL OR (sent_at, id) < ($3, $4::uuid))
ORDER BY sent_at DESC, id DESC LIMIT $5
"""


class Page(BaseModel):
    model_config = ConfigDict(extra="ignore")  # api_key may ride in the query
    limit: int = Field(50, ge=1, le=200)
    before: str | None = Field(None, description="the `next` cursor of the previous page")
    phone: str | None = None

    @field_validator("before")
    @classmethod
    def _cursor(cls, value: str | None) -> str | None:
        if value is not None:
            _decode_cursor(value)
        return value

    @field_validator("phone")
    @classmethod
    def _phone(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return to_e164(value if value.startswith("+") else "+" + value)
        except InvalidPhone as exc:
            raise ValueError(f"{exc.reason}; give the number in international form, e.g. +212600000000") from None


def _encode_cursor(at: datetime, row_id: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(f"{at.isoformat()}|{row_id}".encode()).decode()


def _decode_cursor(value: str) -> tuple[datetime, uuid.UUID]:
    try:
        at, row_id = base64.urlsafe_b64decode(value.encode()).decode().split("|")
        return datetime.fromisoformat(at), uuid.UUID(row_id)
    except ValueError:
        raise ValueError("not a cursor this API gave out") from None


def _cursor_args(page: Page) -> tuple[datetime | None, uuid.UUID | None]:
    return _decode_cursor(page.before) if page.before else (None, None)


async def list_conversations(request: web.Request) -> web.Response:
    principal = await request.app[API_KEYS].authenticate(request, Role.VIEWER)
    page = Page.model_validate(dict(request.query))
    async with request.app[POOL].acquire() as conn:
        rows = await conn.fetch(_CONVERSATIONS, principal.tenant_id, page.phone, *_cursor_args(page), page.limit)
    following = _encode_cursor(rows[-1]["last_message_at"], rows[-1]["id"]) if len(rows) == page.limit else None
    return web.json_response({"items": [json_row(r) for r in rows], "next": following})


async def get_conversation(request: web.Request) -> web.Response:
    principal = await request.app[API_KEYS].authenticate(request, Role.VIEWER)
    conversation_id = uuid_or_404(request.match_info["id"], "conversation")
    async with request.app[POOL].acquire() as conn:
        row = await conn.fetchrow(_CONVERSATION, principal.tenant_id, conversation_id)
    if row is None:
        raise NotFound("no such conversation")
    return web.json_response(json_row(row))


async def list_messages(request: web.Request) -> web.Response:
    principal = await request.app[API_KEYS].authenticate(request, Role.VIEWER)
    conversation_id = uuid_or_404(request.match_info["id"], "conversation")
    page = Page.model_validate(dict(request.query))
    async with request.app[POOL].acquire() as conn:
        if await conn.fetchrow(_CONVERSATION, principal.tenant_id, conversation_id) is None:
            raise NotFound("no such conversation")
        rows = await conn.fetch(_MESSAGES, principal.tenant_id, conversation_id, *_cursor_args(page), page.limit)
    following = _encode_cursor(rows[-1]["sent_at"], rows[-1]["id"]) if len(rows) == page.limit else None
    return web.json_response({"items": [json_row(r) for r in rows], "next": following})


routes = [
    web.get("/v1/conversations", list_conversations),
    web.get("/v1/conversations/{id}", get_conversation),
    web.get("/v1/conversations/{id}/messages", list_messages),
]
