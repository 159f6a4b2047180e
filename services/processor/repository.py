"""The processor's SQL: conversations and messages."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from shared.events.catalog import MessageKind, WhatsAppMessage

_UPSERT_CONVERSATION = """
INSERT INTO conversations (id, tenant_id, chat_id, provider, is_group, phone, display_name, created_at,
                           last_message_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)
ON CONFLICT (tenant_id, chat_id) DO UPDATE SET
    last_message_at = GREATEST(conversations.last_message_at, EXCLUDED.last_message_at),
    phone = COALESCE(conversations.phone, EXCLUDED.phone),
    display_name = COALESCE(EXCLUDED.display_name, conversations.display_name)
RETURNING id
"""

_INSERT_MESSAGE = """
INSERT INTO messages (id, tenant_id, conversation_id, provider, provider_message_id, direction, kind, text, sender,
                      sender_name, participant, media, location, reply_to, target_message_id, reaction, intent,
                      language, sent_at, processed_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12::jsonb, $13::jsonb, $14, $15, $16, $17::jsonb, $18, $19, $20)
ON CONFLICT (tenant_id, provider, provider_message_id) DO NOTHING
RETURNING id
"""

_EDIT = """
UPDATE messages SET text = COALESCE($3, text), edited_at = $4, edit_count = edit_count + 1
WHERE conversation_id = $1 AND provider_message_id = $2 AND kind NOT IN ('edit', 'revoke', 'reaction')
"""

_REVOKE = """
UPDATE messages SET revoked_at = $3
WHERE conversation_id = $1 AND provider_message_id = $2 AND kind NOT IN ('edit', 'revoke', 'reaction')
"""

_REACT = """
UPDATE messages SET reactions = CASE WHEN $4 = '' THEN reactions - $3 ELSE reactions || jsonb_build_object($3, $4) END
WHERE conversation_id = $1 AND provider_message_id = $2 AND kind NOT IN ('edit', 'revoke', 'reaction')
"""

_ACTIONS_ON = """
SELECT kind, text, reaction, sender, participant, sent_at FROM messages
WHERE conversation_id = $1 AND target_message_id = $2 ORDER BY sent_at, processed_at
"""

_SET_LANGUAGE = "UPDATE conversations SET language = $2 WHERE id = $1"
_SET_OPTED_OUT = "UPDATE conversations SET opted_out = $2 WHERE id = $1"


@dataclass(frozen=True)
class Action:
    kind: MessageKind
    text: str | None
    reaction: str | None
    who: str
    at: datetime


def _who(sender: str | None, participant: str | None) -> str:
    return sender or participant or "unknown"


class Conversations:
    def __init__(self, conn: asyncpg.Connection):
        self.conn = conn

    async def touch(self, tenant_id: str, m: WhatsAppMessage, phone: str | None) -> uuid.UUID:
        return await self.conn.fetchval(
            _UPSERT_CONVERSATION, uuid.uuid4(), tenant_id, m.chat_id, m.provider.value, m.is_group, phone,
            None if m.is_group else m.sender_name, m.sent_at,
        )

    async def set_language(self, conversation_id: uuid.UUID, language: str) -> None:
        await self.conn.execute(_SET_LANGUAGE, conversation_id, language)

    async def set_opted_out(self, conversation_id: uuid.UUID, opted_out: bool) -> None:
        await self.conn.execute(_SET_OPTED_OUT, conversation_id, opted_out)


class Messages:
    def __init__(self, conn: asyncpg.Connection):
        self.conn = conn

    async def add(self, tenant_id: str, conversation_id: uuid.UUID, m: WhatsAppMessage, *, intent: dict | None,
                  language: str | None, processed_at: datetime) -> bool:
        """False when this provider message was stored before: the provider repeated itself."""
        inserted = await self.conn.fetchval(
            _INSERT_MESSAGE, uuid.uuid4(), tenant_id, conversation_id, m.provider.value, m.provider_message_id,
            m.direction.value, m.kind.value, m.text, m.sender, m.sender_name, m.participant,
            m.media.model_dump_json() if m.media else None, m.location.model_dump_json() if m.location else None,
            m.reply_to, m.target_message_id, m.reaction, json.dumps(intent) if intent else None, language, m.sent_at,
            processed_at,
        )
        return inserted is not None

    async def apply(self, conversation_id: uuid.UUID, target: str, action: Action) -> None:
        """An edit, revoke or reaction takes effect on the message it points at, if that is stored."""
        if action.kind is MessageKind.EDIT:
            await self.conn.execute(_EDIT, conversation_id, target, action.text, action.at)
        elif action.kind is MessageKind.REVOKE:
            await self.conn.execute(_REVOKE, conversation_id, target, action.at)
        elif action.kind is MessageKind.REACTION:
            await self.conn.execute(_REACT, conversation_id, target, action.who, action.reaction or "")

    async def actions_on(self, conversation_id: uuid.UUID, target: str) -> list[Action]:
        """Edits, revokes and reactions that arrived before the message they point at."""
        rows = await self.conn.fetch(_ACTIONS_ON, conversation_id, target)
        return [Action(MessageKind(r["kind"]), r["text"], r["reaction"], _who(r["sender"], r["participant"]),
                       r["sent_at"]) for r in rows]


@dataclass
class ProcessorUnitOfWork:
    conn: asyncpg.Connection

    def __post_init__(self) -> None:
        self.conversations = Conversations(self.conn)
        self.messages = Messages(self.conn)


def action_of(m: WhatsAppMessage) -> Action:
    return Action(m.kind, m.text, m.reaction, _who(m.sender, m.participant), m.sent_at)
