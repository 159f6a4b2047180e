"""The Celery side of the baseline: one task that stores a webhook's message, once, in PostgreSQL."""

from __future__ import annotations

import os

import psycopg
from celery import Celery
from celery.signals import worker_process_init
from psycopg.types.json import Jsonb

app = Celery("bench_baseline", broker=os.environ.get("BENCH_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//"))
# Defaults otherwise: a plain pipeline. No result backend: nothing reads task results.
app.conf.update(task_ignore_result=True, broker_connection_retry_on_startup=True)

CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS messages (
    id          text COLLATE "C" PRIMARY KEY,  -- the provider's message id: repeats are dropped
    tenant_id   text NOT NULL,
    chat_id     text NOT NULL,
    sender      text,
    body        text,
    sent_at     timestamptz,
    payload     jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""

INSERT = """
INSERT INTO messages (id, tenant_id, chat_id, sender, body, sent_at, payload)
VALUES (%s, %s, %s, %s, %s, to_timestamp(%s), %s)
ON CONFLICT (id) DO NOTHING
"""

_connection: psycopg.Connection | None = None


@worker_process_init.connect
def _connect(**_: object) -> None:
    # One connection per worker process, opened after the fork (a connection must not be shared).
    global _connection
    _connection = psycopg.connect(os.environ["BENCH_DATABASE_URL"], autocommit=True)


def _db() -> psycopg.Connection:
    if _connection is None or _connection.closed:
        _connect()
    assert _connection is not None
    return _connection


@app.task(name="bench.insert_message")
def insert_message(tenant_id: str, message_id: str, chat_id: str, sender: str | None, body: str | None,
                   sent_at: float | None, payload: dict) -> None:
    # autocommit: the row is committed (and visible) when execute returns
    _db().execute(INSERT, (message_id, tenant_id, chat_id, sender, body, sent_at, Jsonb(payload)))
