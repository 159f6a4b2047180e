-- Tables the shared runtime keeps in every service's schema.

-- Events this service has applied, per consumer: a redelivery finds its row and changes nothing.
CREATE TABLE inbox (
    consumer   text        NOT NULL,
    event_id   uuid        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
CREATE INDEX inbox_applied_at ON inbox (applied_at);

-- Events written with the state change that caused them; the relay deletes a row once confirmed.
CREATE TABLE outbox (
    seq            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id       uuid        NOT NULL,
    event_type     text        NOT NULL,
    correlation_id text        NOT NULL,
    occurred_at    timestamptz NOT NULL,
    exchange       text        NOT NULL,
    routing_key    text        NOT NULL,
    body           text        NOT NULL,
    headers        jsonb       NOT NULL DEFAULT '{}',
    created_at     timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE FUNCTION notify_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_TABLE_SCHEMA || '.outbox', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER outbox_inserted AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION notify_outbox();

-- The dead-letter store: deliveries that exhausted their attempts or could never succeed.
CREATE TABLE failed_events (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subscription text        NOT NULL,
    event_id     text,
    event_type   text,
    tenant_id    text,
    body         bytea       NOT NULL,
    headers      jsonb       NOT NULL DEFAULT '{}',
    reason       text        NOT NULL,
    attempts     integer     NOT NULL,
    history      jsonb       NOT NULL DEFAULT '[]',
    failed_at    timestamptz NOT NULL DEFAULT now(),
    retried_at   timestamptz
);
CREATE INDEX failed_events_waiting ON failed_events (failed_at) WHERE retried_at IS NULL;

-- One row per periodic job: the fencing epoch of its current leader and the last tick it ran.
CREATE TABLE job_leases (
    job         text        PRIMARY KEY,
    epoch       bigint      NOT NULL,
    holder      text        NOT NULL,
    acquired_at timestamptz NOT NULL,
    last_tick   timestamptz
);
