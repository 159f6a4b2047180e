-- The events browsers follow are kept by the broker now (the gateway.stream queue, a RabbitMQ stream).
DROP TABLE stream_events;
DROP FUNCTION notify_stream();
