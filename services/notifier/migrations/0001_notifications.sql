-- Who sends for a tenant, written by `wabus tenants add` into this schema as into the gateway's.
CREATE TABLE senders (
    tenant_id      text  PRIMARY KEY,
    provider       text  NOT NULL,
    session        text  NOT NULL,  -- WAHA session, Evolution instance, Meta phone-number id
    default_region text  NOT NULL CHECK (default_region ~ '^[A-Z]{2}$'),
    locale         text  NOT NULL,
    templates      jsonb NOT NULL DEFAULT '{}'  -- {"turn_reached": {"fr": "…"}}: overrides the built-in texts
);

-- What we know of each WhatsApp session: from the gateway's status events and from polling.
CREATE TABLE sessions (
    session     text        PRIMARY KEY,
    status      text        NOT NULL,
    connected   boolean     NOT NULL,
    can_send    boolean     NOT NULL,
    source      text        NOT NULL,  -- event or poll
    changed_at  timestamptz NOT NULL,
    checked_at  timestamptz NOT NULL
);

CREATE TABLE broadcasts (
    id              uuid        PRIMARY KEY,
    tenant_id       text        NOT NULL,
    status          text        NOT NULL CHECK (status IN ('accepted', 'queued', 'running', 'completed', 'partial',
                                                           'failed', 'cancelled')),
    text            text        NOT NULL,
    total           integer     NOT NULL,
    invalid         integer     NOT NULL,
    opted_out       integer     NOT NULL,
    fingerprint     text        NOT NULL,  -- message and recipients: the same broadcast again within minutes
    created_at      timestamptz NOT NULL,
    finished_at     timestamptz
);
CREATE INDEX broadcasts_recent ON broadcasts (tenant_id, fingerprint, created_at DESC);

-- One row per message to send, created in the transaction that consumed its cause.
CREATE TABLE notifications (
    id                  uuid        PRIMARY KEY,
    tenant_id           text        NOT NULL,
    session             text        NOT NULL,
    kind                text        NOT NULL,  -- the template, or "reply" / "broadcast"
    cause               text        NOT NULL,  -- the event or broadcast it comes from: with the phone, its dedupe key
    broadcast_id        uuid        REFERENCES broadcasts (id),
    phone               text        NOT NULL,  -- E.164
    text                text        NOT NULL,
    status              text        NOT NULL CHECK (status IN ('queued', 'sending', 'unknown', 'sent', 'delivered',
                                                               'read', 'failed', 'cancelled')),
    attempts            integer     NOT NULL DEFAULT 0,
    reason              text,
    provider_message_id text,
    next_attempt_at     timestamptz NOT NULL,
    created_at          timestamptz NOT NULL,
    sending_since       timestamptz,
    sent_at             timestamptz,
    delivered_at        timestamptz,
    read_at             timestamptz,
    failed_at           timestamptz,
    UNIQUE (cause, phone)
);
CREATE INDEX notifications_due ON notifications (next_attempt_at, created_at) WHERE status = 'queued';
CREATE INDEX notifications_in_doubt ON notifications (sending_since) WHERE status IN ('sending', 'unknown');
CREATE UNIQUE INDEX notifications_by_provider_id ON notifications (provider_message_id)
    WHERE provider_message_id IS NOT NULL;
CREATE INDEX notifications_of_broadcast ON notifications (broadcast_id, created_at) WHERE broadcast_id IS NOT NULL;
CREATE INDEX notifications_recent ON notifications (tenant_id, status, created_at DESC);

-- Acks that arrive before the send's own answer is recorded; applied when it is.
CREATE TABLE early_acks (
    provider_message_id text        NOT NULL,
    status              text        NOT NULL,
    at                  timestamptz NOT NULL,
    PRIMARY KEY (provider_message_id, status)
);

-- Patients who wrote STOP: no broadcasts until they write START.
CREATE TABLE opt_outs (
    tenant_id text        NOT NULL,
    phone     text        NOT NULL,
    at        timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, phone)
);

-- Stripe's semantics: the same key and body get the first answer; another body is refused.
CREATE TABLE idempotency_keys (
    tenant_id    text        NOT NULL,
    key          text        NOT NULL,
    request_hash text        NOT NULL,
    status_code  integer,  -- null while the first request is in flight
    response     jsonb,
    created_at   timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, key)
);
