-- Where `wabus failed retry` sends a failed event back: a queue through the default exchange, a
-- sharded subscription's headers exchange, or, for an event no queue was bound for, its exchange.
ALTER TABLE failed_events
    ADD COLUMN requeue_exchange    text NOT NULL DEFAULT '',
    ADD COLUMN requeue_routing_key text;
UPDATE failed_events SET requeue_routing_key = subscription;
ALTER TABLE failed_events ALTER COLUMN requeue_routing_key SET NOT NULL;
