-- Events fanned out to browsers (WebSocket / SSE), kept a while so a client that reconnects with the
-- last id it saw gets what it missed. Read in (xid, seq) order below the snapshot horizon: a row is
-- handed out only once no older transaction can still add one before it.
CREATE TABLE stream_events (
    seq         bigint      GENERATED ALWAYS AS IDENTITY,
    xid         xid8        NOT NULL DEFAULT pg_current_xact_id(),
    tenant_id   text        NOT NULL,
    topic       text        NOT NULL,
    department  text,
    event_id    uuid        NOT NULL UNIQUE,
    body        text        NOT NULL,
    occurred_at timestamptz NOT NULL,
    PRIMARY KEY (xid, seq)
);
CREATE INDEX stream_events_by_tenant ON stream_events (tenant_id, xid, seq);
CREATE INDEX stream_events_occurred_at ON stream_events (occurred_at);

CREATE FUNCTION notify_stream() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_TABLE_SCHEMA || '.stream', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER stream_events_inserted AFTER INSERT ON stream_events
    FOR EACH STATEMENT EXECUTE FUNCTION notify_stream();
