-- One conversation per tenant and chat; every message, edit, revoke and reaction kept.
CREATE TABLE conversations (
    id              uuid        PRIMARY KEY,
    tenant_id       text        NOT NULL,
    chat_id         text        NOT NULL,
    provider        text        NOT NULL,
    is_group        boolean     NOT NULL,
    phone           text,                  -- E.164, when the chat is a person whose number is known
    display_name    text,
    language        text,                  -- the last one the bot recognised
    opted_out       boolean     NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL,
    last_message_at timestamptz NOT NULL,
    UNIQUE (tenant_id, chat_id)
);
CREATE INDEX conversations_recent ON conversations (tenant_id, last_message_at DESC, id);
CREATE INDEX conversations_phone ON conversations (tenant_id, phone);

CREATE TABLE messages (
    id                  uuid        PRIMARY KEY,
    tenant_id           text        NOT NULL,
    conversation_id     uuid        NOT NULL REFERENCES conversations (id),
    provider            text        NOT NULL,
    provider_message_id text        NOT NULL,
    direction           text        NOT NULL CHECK (direction IN ('inbound', 'outbound')),
    kind                text        NOT NULL,
    text                text,
    sender              text,
    sender_name         text,
    participant         text,
    media               jsonb,
    location            jsonb,
    reply_to            text,
    target_message_id   text,        -- what an edit, revoke or reaction points at
    reaction            text,
    intent              jsonb,
    language            text,
    sent_at             timestamptz NOT NULL,
    processed_at        timestamptz NOT NULL,
    edited_at           timestamptz,
    edit_count          integer     NOT NULL DEFAULT 0,
    revoked_at          timestamptz,
    reactions           jsonb       NOT NULL DEFAULT '{}',  -- who → emoji
    UNIQUE (tenant_id, provider, provider_message_id)
);
CREATE INDEX messages_by_conversation ON messages (conversation_id, sent_at DESC, id);
CREATE INDEX messages_targets ON messages (conversation_id, target_message_id) WHERE target_message_id IS NOT NULL;
