"""Failures the runtime decides on; everything else raised by a handler is retried."""


class PermanentFailure(Exception):
    """Retrying cannot help (a bad payload, an unknown version): dead-letter at once."""


class InvalidEvent(PermanentFailure):
    pass


class UnknownEventType(InvalidEvent):
    def __init__(self, event_type: object):
        super().__init__(f"unknown event type {event_type!r}")
        self.event_type = event_type


class UnsupportedEventVersion(InvalidEvent):
    def __init__(self, event_type: str, version: object, supported: list[int]):
        super().__init__(f"event {event_type!r} version {version!r} is not supported (supported: {supported})")
        self.event_type = event_type
        self.version = version


class DatabaseUnavailable(Exception):
    """PostgreSQL cannot be reached; the work waits for it instead of spending attempts."""


class PublishFailed(Exception):
    """The broker did not confirm a publish in time, refused it, or could not route it."""

    def __init__(self, message: str, *, reason: str = "connection"):
        super().__init__(message)
        self.reason = reason  # timeout, unroutable, nack, connection


class StaleLeader(Exception):
    """A newer leader holds the job's lease; this replica must not write."""
