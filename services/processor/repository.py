"""The processor's SQL: conversations and messages."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from shared.events.catalog import MessageKind, WhatsAppMessage

# One round trip for what every message needs: its conversation (created or touched), the message
# itself (unless the provider repeated it), and the edits, revokes and reactions that arrived before
# it and point at it. The CTEs share one snapshot: `earlier` cannot see the row `stored` inserts.
_STORE_MESSAGE = """
WITH conversation AS (
    INSERT INTO conversations (id, tenant_id, chat_id, provider, is_group, phone, display_name, created_at,
                               last_message_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)
    ON CONFLICT (tenant_id, chat_id) DO UPDATE SET
        last_message_at = GREATEST(conversations.last_message_at, EXCLUDED.last_message_at),
        phone = COALESCE(conversations.phone, EXCLUDED.phone),
        display_name = COALESCE(EXCLUDED.display_name, conversations.display_name)
    RETURNING id
), stored AS (
    INSERT INTO messages (id, tenant_id, conversation_id, provider, provider_message_id, direction, kind, text,
                          sender, sender_name, participant, media, location, reply_to, target_message_id, reaction,
                          intent, language, sent_at, processed_at)
    SELECT $9, $2, conversation.id, $4, $10, $11, $12, $13, $14, $15, $16, $17::jsonb, $18::jsonb, $19, $20, $21,
           $22::jsonb, $23, $24, $25
    FROM conversation
    ON CONFLICT (tenant_id, provider, provider_message_id) DO NOTHING
    RETURNING id
)
SELECT conversation.id,
       EXISTS (SELECT FROM stored) AS stored,
       CASE WHEN $12 NOT IN ('edit', 'revoke', 'reaction') THEN (
           SELECT json_agg(json_build_object('kind', a.kind, 'text', a.text, 'reaction', a.reaction,
                                             'sender', a.sender, 'participant', a.participant, 'sent_at', a.sent_at)
                           ORDER BY a.sent_at, a.processed_at)
           FROM messages a WHERE a.conversation_id = conversation.id AND a.target_message_id = $10
       ) END AS earlier
FROM conversation
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

_SET_LANGUAGE = "UPDATE conversations SET language = $2 WHERE id = $1"
_SET_OPTED_OUT = "UPDATE conversations SET opted_out = $2 WHERE id = $1"


@dataclass(frozen=True)
class Action:
    kind: MessageKind
    text: str | None
    reaction: str | None
    who: str
    at: datetime


@dataclass(frozen=True)
class Stored:
    conversation_id: uuid.UUID
    is_new: bool  # False: the provider sent this message before, under the same id
    earlier: list[Action]  # edits, revokes and reactions that arrived before the message they point at


def _who(sender: str | None, participant: str | None) -> str:
    return sender or participant or "unknown"


class Conversations:
    def __init__(self, conn: asyncpg.Connection):
        self.conn = conn

    async def set_language(self, conversation_id: uuid.UUID, language: str) -> None:
        await self.conn.execute(_SET_LANGUAGE, conversation_id, language)

    async def set_opted_out(self, conversation_id: uuid.UUID, opted_out: bool) -> None:
        await self.conn.execute(_SET_OPTED_OUT, conversation_id, opted_out)


class Messages:
    def __init__(self, conn: asyncpg.Connection):
        self.conn = conn

    async def store(self, tenant_id: str, m: WhatsAppMessage, *, phone: str | None, intent: dict | None,
                    language: str | None, processed_at: datetime) -> Stored:
        """Keep the message in its conversation, creating that on the chat's first message."""
        row = await self.conn.fetchrow(
            _STORE_MESSAGE, uuid.uuid4(), tenant_id, m.chat_id, m.provider.value, m.is_group, phone,
            None if m.is_group else m.sender_name, m.sent_at,
            uuid.uuid4(), m.provider_message_id, m.direction.value, m.kind.value, m.text, m.sender, m.sender_name,
            m.participant, m.media.model_dump_json() if m.media else None,
            m.location.model_dump_json() if m.location else None, m.reply_to, m.target_message_id, m.reaction,
            json.dumps(intent) if intent else None, language, m.sent_at, processed_at,
        )
        earlier = [Action(MessageKind(a["kind"]), a["text"], a["reaction"], _who(a["sender"], a["participant"]),
                          datetime.fromisoformat(a["sent_at"])) for a in json.loads(row["earlier"] or "[]")]
        return Stored(row["id"], row["stored"], earlier)

    async def apply(self, conversation_id: uuid.UUID, target: str, action: Action) -> None:
        """An edit, revoke or reaction takes effect on the message it points at, if that is stored."""
        if action.kind is MessageKind.EDIT:
            await self.conn.execute(_EDIT, conversation_id, target, action.text, action.at)
        elif action.kind is MessageKind.REVOKE:
            await self.conn.execute(_REVOKE, conversation_id, target, action.at)
        elif action.kind is MessageKind.REACTION:
            await self.conn.execute(_REACT, conversation_id, target, action.who, action.reaction or "")


@dataclass
class ProcessorUnitOfWork:
    conn: asyncpg.Connection

    def __post_init__(self) -> None:
        self.conversations = Conversations(self.conn)
        self.messages = Messages(self.conn)


def action_of(m: WhatsAppMessage) -> Action:
    return Action(m.kind, m.text, m.reaction, _who(m.sender, m.participant), m.sent_at)
