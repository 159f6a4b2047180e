-- What the gateway accepted, keyed by what makes a provider's repeat recognisable.
CREATE TABLE received_webhooks (
    tenant_id   text        NOT NULL,
    provider    text        NOT NULL,
    dedupe_key  text        NOT NULL,
    event_id    uuid        NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, provider, dedupe_key)
);
CREATE INDEX received_webhooks_received_at ON received_webhooks (received_at);

-- WhatsApp's hidden ids (LIDs) whose phone number a payload revealed.
CREATE TABLE lid_phones (
    tenant_id text        NOT NULL,
    lid       text        NOT NULL,
    phone     text        NOT NULL,
    seen_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, lid)
);
