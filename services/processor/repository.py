"""The processor's SQL: conversations and messages."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from shared.events.catalog import MessageKind, WhatsAppMessage

# One round trip for what a group of messages needs: their conversations (created or touched), the
# messages themselves (unless the provider repeated them), and for each, the edits, revokes and
# reactions that arrived before it in earlier transactions and point at it. The CTEs share one
# snapshot: `earlier` cannot see the rows `stored` inserts.
_STORE_MESSAGES = """
WITH conversation AS (
    INSERT INTO conversations (id, tenant_id, chat_id, provider, is_group, phone, display_name, created_at,
                               last_message_at)
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::boolean[], $6::text[], $7::text[],
                         $8::timestamptz[], $9::timestamptz[])
    ON CONFLICT (tenant_id, chat_id) DO UPDATE SET
        last_message_at = GREATEST(conversations.last_message_at, EXCLUDED.last_message_at),
        phone = COALESCE(conversations.phone, EXCLUDED.phone),
        display_name = COALESCE(EXCLUDED.display_name, conversations.display_name)
    RETURNING id, tenant_id, chat_id
), incoming AS (
    SELECT m.*, conversation.id AS conversation_id
    FROM unnest($10::uuid[], $11::text[], $12::text[], $13::text[], $14::text[], $15::text[], $16::text[],
                $17::text[], $18::text[], $19::text[], $20::text[], $21::text[], $22::text[], $23::text[],
                $24::text[], $25::text[], $26::text[], $27::text[], $28::timestamptz[], $29::timestamptz[])
        AS m(id, tenant_id, chat_id, provider, provider_message_id, direction, kind, text, sender, sender_name,
             participant, media, location, reply_to, target_message_id, reaction, intent, language, sent_at,
             processed_at)
    JOIN conversation USING (tenant_id, chat_id)
), stored AS (
    INSERT INTO messages (id, tenant_id, conversation_id, provider, provider_message_id, direction, kind, text,
                          sender, sender_name, participant, media, location, reply_to, target_message_id, reaction,
                          intent, language, sent_at, processed_at)
    SELECT id, tenant_id, conversation_id, provider, provider_message_id, direction, kind, text, sender, sender_name,
           participant, media::jsonb, location::jsonb, reply_to, target_message_id, reaction, intent::jsonb, language,
           sent_at, processed_at
    FROM incoming
    ON CONFLICT (tenant_id, provider, provider_message_id) DO NOTHING
    RETURNING id
)
SELECT i.id, i.conversation_id, s.id IS NOT NULL AS stored,
       CASE WHEN s.id IS NOT NULL AND i.kind NOT IN ('edit', 'revoke', 'reaction') THEN (
           SELECT json_agg(json_build_object('kind', a.kind, 'text', a.text, 'reaction', a.reaction,
                                             'sender', a.sender, 'participant', a.participant, 'sent_at', a.sent_at)
                           ORDER BY a.sent_at, a.processed_at)
           FROM messages a WHERE a.conversation_id = i.conversation_id AND a.target_message_id = i.provider_message_id
       ) END AS earlier
FROM incoming i LEFT JOIN stored s USING (id)
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
class Incoming:
    """A message to keep, with what the bot made of it."""
    tenant_id: str
    message: WhatsAppMessage
    phone: str | None
    intent: dict | None
    language: str | None
    processed_at: datetime

    @property
    def key(self) -> tuple[str, str, str]:
        """What makes a message unique: the same message, sent again, has the same key."""
        return self.tenant_id, self.message.provider.value, self.message.provider_message_id


@dataclass(frozen=True)
class Stored:
    conversation_id: uuid.UUID
    is_new: bool  # False: the provider sent this message before, under the same id
    earlier: list[Action]  # edits, revokes and reactions stored before it that point at it


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

    async def store(self, incoming: Sequence[Incoming]) -> list[Stored]:
        """Keep the messages, in order, in their conversations (created on a chat's first message)."""
        if not incoming:
            return []
        first: dict[tuple[str, str, str], int] = {}  # a message repeated within the group is kept once
        for i, item in enumerate(incoming):
            first.setdefault(item.key, i)
        kept = [incoming[i] for i in sorted(first.values())]
        ids = [uuid.uuid4() for _ in kept]
        rows = {r["id"]: r for r in await self.conn.fetch(_STORE_MESSAGES, *_conversation_columns(kept),
                                                           *_message_columns(ids, kept))}
        stored: dict[tuple[str, str, str], Stored] = {}
        for item, id_ in zip(kept, ids, strict=True):
            row = rows[id_]
            earlier = [Action(MessageKind(a["kind"]), a["text"], a["reaction"], _who(a["sender"], a["participant"]),
                              datetime.fromisoformat(a["sent_at"])) for a in json.loads(row["earlier"] or "[]")]
            stored[item.key] = Stored(row["conversation_id"], row["stored"], earlier)
        return [stored[item.key] if first[item.key] == i else Stored(stored[item.key].conversation_id, False, [])
                for i, item in enumerate(incoming)]

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


def _conversation_columns(kept: list[Incoming]) -> list[list]:
    """One row per conversation, as its messages in order would have left it one by one."""
    rows: dict[tuple[str, str], list] = {}
    for item in kept:
        m = item.message
        name = None if m.is_group else m.sender_name
        row = rows.get((item.tenant_id, m.chat_id))
        if row is None:
            rows[(item.tenant_id, m.chat_id)] = [uuid.uuid4(), item.tenant_id, m.chat_id, m.provider.value, m.is_group,
                                                 item.phone, name, m.sent_at, m.sent_at]
        else:
            row[5] = row[5] if row[5] is not None else item.phone
            row[6] = name if name is not None else row[6]
            row[8] = max(row[8], m.sent_at)
    return [list(column) for column in zip(*rows.values(), strict=True)]


def _message_columns(ids: list[uuid.UUID], kept: list[Incoming]) -> list[list]:
    columns: list[list] = [ids, *([] for _ in range(19))]
    for item in kept:
        m = item.message
        for column, value in zip(columns[1:], (
            item.tenant_id, m.chat_id, m.provider.value, m.provider_message_id, m.direction.value, m.kind.value,
            m.text, m.sender, m.sender_name, m.participant, m.media.model_dump_json() if m.media else None,
            m.location.model_dump_json() if m.location else None, m.reply_to, m.target_message_id, m.reaction,
            json.dumps(item.intent) if item.intent else None, item.language, m.sent_at, item.processed_at,
        ), strict=True):
            column.append(value)
    return columns


def action_of(m: WhatsAppMessage) -> Action:
    return Action(m.kind, m.text, m.reaction, _who(m.sender, m.participant), m.sent_at)
