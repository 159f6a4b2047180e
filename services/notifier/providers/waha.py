"""WAHA (PROVIDERS.md §1, Outbound): `POST /api/sendText`, `GET /api/sessions/{session}`, a chat's messages."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any
from urllib.parse import quote

import aiohttp

from shared.events.catalog import Provider, SessionStatus
from shared.phones import chat_of_phone, parse_jid

from . import (
    DEFAULT_TIMEOUT_S,
    Answer,
    FailureKind,
    SendFailed,
    Sent,
    SessionState,
    base_url_of,
    call,
    failure_by_status,
    masked,
    recipient_digits,
    timeout_of,
    unexpected_answer,
)

# How far back `find_sent` looks in the chat; a reconciliation runs soon after the send it checks.
RECENT_MESSAGES = 50

SESSION_STATUSES = {
    "WORKING": SessionStatus.WORKING,
    "STARTING": SessionStatus.STARTING,
    "SCAN_QR_CODE": SessionStatus.SCAN_QR,
    "PASSKEY_REQUIRED": SessionStatus.SCAN_QR,
    "PASSKEY_CONFIRMATION_REQUIRED": SessionStatus.SCAN_QR,
    "FAILED": SessionStatus.FAILED,
    "STOPPED": SessionStatus.STOPPED,
}


class WahaProvider:
    provider = Provider.WAHA
    # Our sent messages can be found in the chat: an unanswered send can be settled by asking.
    can_look_up = True

    def __init__(self, http: aiohttp.ClientSession, base_url: str, *, api_key: str | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S):
        self._http = http
        self._base = base_url_of(base_url)
        self._headers = {"X-Api-Key": api_key} if api_key else {}
        self._timeout = timeout_of(timeout_s)

    async def send_text(self, session: str, phone_e164: str, text: str) -> Sent:
        chat = chat_of_phone(recipient_digits(phone_e164))
        answer = await call(self._http, "POST", f"{self._base}/api/sendText", headers=self._headers,
                            timeout=self._timeout, writes=True,
                            json_body={"session": session, "chatId": chat, "text": text})
        if not answer.ok:
            raise failure(answer)
        sent = sent_of(answer.body, chat)
        if sent is None:
            raise unexpected_answer(answer, "a message id", writes=True)
        return sent

    async def session_state(self, session: str) -> SessionState:
        answer = await call(self._http, "GET", f"{self._base}/api/sessions/{quote(session, safe='')}",
                            headers=self._headers, timeout=self._timeout, writes=False)
        if not answer.ok:
            raise failure(answer)
        status = answer.body.get("status") if isinstance(answer.body, dict) else None
        if not isinstance(status, str):
            raise unexpected_answer(answer, "a session status", writes=False)
        return session_state_of(status)

    async def find_sent(self, session: str, phone_e164: str, text: str, since: datetime, *,
                        taken: Collection[str] = ()) -> str | None:
        """The id of our message with this text in the chat since `since`, if WAHA has one not `taken`."""
        chat = chat_of_phone(recipient_digits(phone_e164))
        url = f"{self._base}/api/{quote(session, safe='')}/chats/{quote(chat, safe='@')}/messages"
        answer = await call(self._http, "GET", url, headers=self._headers, timeout=self._timeout, writes=False,
                            params={"limit": str(RECENT_MESSAGES), "downloadMedia": "false"})
        if not answer.ok:
            raise failure(answer)
        return matching_sent(answer.body, text, since, taken)


def session_state_of(status: str) -> SessionState:
    # A status this code does not know yet is treated as broken: never send into it.
    known = SESSION_STATUSES.get(status, SessionStatus.FAILED)
    working = known is SessionStatus.WORKING
    return SessionState(status=known, connected=working, can_send=working, provider_status=status)


def split_id(serialized: str) -> tuple[str | None, str]:
    """`{fromMe}_{chat}_{id}[_{participant}]` → (chat, bare id), the bare id being what acks are matched on."""
    parts = serialized.split("_")
    if len(parts) >= 3 and parts[0] in ("true", "false") and "@" in parts[1]:
        return parts[1], parts[2]
    return None, serialized


def serialized_id_of(message: Any) -> str | None:
    """WAHA's message id: a string in WAMessage, an object in raw WEBJS data, `key.id` in NOWEB's."""
    if not isinstance(message, dict):
        return None
    value = message.get("id")
    if isinstance(value, dict):
        value = value.get("_serialized") or value.get("id")
    if not value and isinstance(message.get("key"), dict):
        value = message["key"].get("id")
    return value if isinstance(value, str) and value else None


def sent_of(body: Any, chat: str) -> Sent | None:
    serialized = serialized_id_of(body)
    if serialized is None:
        return None
    chat_in_id, bare = split_id(serialized)
    return Sent(provider_message_id=bare, chat_id=str(parse_jid(chat_in_id or chat)))


def matching_sent(messages: Any, text: str, since: datetime, taken: Collection[str] = ()) -> str | None:
    """The earliest message of ours with exactly this text, sent at or after `since`, whose id is not `taken`."""
    # WAHA timestamps are whole seconds: a message sent just after `since` can carry the second before.
    earliest = int(since.timestamp())
    found: list[tuple[float, str]] = []
    for message in messages if isinstance(messages, list) else []:
        if not isinstance(message, dict) or message.get("fromMe") is not True or message.get("body") != text:
            continue
        timestamp = message.get("timestamp")
        serialized = serialized_id_of(message)
        if not isinstance(timestamp, int | float) or timestamp < earliest or serialized is None:
            continue
        bare = split_id(serialized)[1]
        if bare not in taken:
            found.append((timestamp, bare))
    return min(found)[1] if found else None


def failure(answer: Answer) -> SendFailed:
    reason = reason_of(answer.body)
    if answer.status == 422:
        # WAHA answers 422 while the session is not WORKING (STARTING, SCAN_QR_CODE, FAILED…).
        return SendFailed(FailureKind.SESSION_NOT_READY, masked(reason) or "session not working", status=422)
    return failure_by_status(answer, reason)


def reason_of(body: Any) -> str:
    """NestJS errors carry `message` (a string or a list), WAHA's own `error`, engine errors `exception`."""
    if not isinstance(body, dict):
        return str(body or "")
    message = body.get("message") or body.get("error")
    if isinstance(message, list):
        message = "; ".join(str(m) for m in message)
    exception = body.get("exception")
    if not message and isinstance(exception, dict):
        message = exception.get("message")
    reason = str(message or "")
    if isinstance(body.get("status"), str):
        reason += f" (session status {body['status']})"
    return reason
