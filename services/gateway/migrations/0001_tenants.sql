-- Tenants: one clinic or business, its WhatsApp provider and how its webhooks prove themselves.
CREATE TABLE tenants (
    id                text        PRIMARY KEY CHECK (id ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    provider          text        NOT NULL CHECK (provider IN ('waha', 'evolution', 'meta')),
    session           text        NOT NULL,  -- WAHA session, Evolution instance, Meta phone-number id
    webhook_secret    text,                  -- WAHA HMAC key, Meta app secret, Evolution token / JWT key
    verify_token      text,                  -- Meta's subscription handshake
    default_region    text        NOT NULL CHECK (default_region ~ '^[A-Z]{2}$'),
    locale            text        NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    secret_rotated_at timestamptz
);
