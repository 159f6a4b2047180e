"""Structured JSON logs that carry the ids of the event being handled."""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from types import MappingProxyType

_CONTEXT_FIELDS = ("service", "correlation_id", "causation_id", "event_id", "tenant_id")
_context: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar(
    "wabus_log_context", default=MappingProxyType({})
)

# Attributes every LogRecord has; anything else came in through `extra=`.
_RECORD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


@contextlib.contextmanager
def log_context(**fields: object) -> Iterator[None]:
    """Attach ids to every record logged inside the block, including from tasks it starts."""
    merged = {**_context.get(), **{k: str(v) for k, v in fields.items() if v is not None}}
    token = _context.set(merged)
    try:
        yield
    finally:
        _context.reset(token)


def bind_log_context(**fields: object) -> None:
    """Attach ids for the rest of the current task (used once per process for `service`)."""
    _context.set({**_context.get(), **{k: str(v) for k, v in fields.items() if v is not None}})


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in _context.get().items() if k in _CONTEXT_FIELDS})
        entry.update({k: v for k, v in vars(record).items() if k not in _RECORD_ATTRS})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aio-pika narrates every reconnect attempt at INFO; our own records say what matters.
    logging.getLogger("aio_pika").setLevel(logging.WARNING)
    logging.getLogger("aiormq").setLevel(logging.WARNING)


def mask_phone(value: str | None) -> str | None:
    """Keep a number recognisable in logs without printing it: +2126******30."""
    if not value:
        return value
    digits = [i for i, ch in enumerate(value) if ch.isdigit()]
    if len(digits) <= 4:
        return "*" * len(value)
    hidden = set(digits[4:-2])
    return "".join("*" if i in hidden else ch for i, ch in enumerate(value))
