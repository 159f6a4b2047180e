"""The Flask side of the baseline: the same endpoint and the same checks as wabus's WAHA webhook.

Checks the HMAC-SHA512 of the raw body in constant time and the timestamp's replay window, parses
the JSON, takes the message's fields, and enqueues a Celery task. "Accepted" here means handed to
the broker by Celery's default publisher (no publisher confirm), not committed to a database.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time

from flask import Flask, jsonify, request

from .tasks import insert_message

SECRET = os.environ.get("BENCH_WEBHOOK_SECRET", "").encode()
TENANT = os.environ.get("BENCH_TENANT", "bench")
REPLAY_WINDOW_S = 300.0

app = Flask(__name__)


def _problem(status: int, title: str, reason: str):
    return jsonify(title=title, reason=reason), status


@app.get("/healthz")
def healthz():
    return "ok"


@app.post("/webhooks/waha/<tenant>")
def receive_webhook(tenant: str):
    if tenant != TENANT:
        return _problem(404, "unknown tenant for this provider", tenant)
    if request.mimetype != "application/json":
        return _problem(415, "unsupported content type", "send application/json")
    body = request.get_data(cache=False)

    given = request.headers.get("X-Webhook-Hmac", "")
    if not given:
        return _problem(401, "unauthenticated", "missing X-Webhook-Hmac")
    if request.headers.get("X-Webhook-Hmac-Algorithm", "sha512").lower() != "sha512":
        return _problem(401, "unauthenticated", "unsupported algorithm")
    expected = hmac.new(SECRET, body, hashlib.sha512).hexdigest()
    if not hmac.compare_digest(given.lower().encode(), expected.encode()):
        return _problem(401, "unauthenticated", "X-Webhook-Hmac does not match the body")
    sent = request.headers.get("X-Webhook-Timestamp")
    if sent is not None:
        if not sent.isdigit() or abs(time.time() * 1000 - int(sent)) > REPLAY_WINDOW_S * 1000:
            return _problem(401, "unauthenticated", "X-Webhook-Timestamp is outside the replay window")

    try:
        webhook = json.loads(body)
    except ValueError as exc:
        return _problem(400, "body is not JSON", str(exc))
    payload = webhook.get("payload") if isinstance(webhook, dict) else None
    if not isinstance(payload, dict) or webhook.get("event") != "message" or not payload.get("id") \
            or not payload.get("from"):
        return _problem(422, "unexpected webhook shape", "expected a WAHA message with payload.id and payload.from")

    # `{fromMe}_{chat}_{id}`: the bare id is the message's key, as wabus keys it
    parts = payload["id"].split("_")
    message_id = parts[2] if len(parts) >= 3 else payload["id"]
    chat_id = parts[1] if len(parts) >= 3 else payload["from"]
    insert_message.delay(tenant, message_id, chat_id, payload["from"], payload.get("body"),
                         payload.get("timestamp"), payload)
    return jsonify(accepted=1, duplicates=0, ignored=[])
