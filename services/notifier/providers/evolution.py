"""Evolution API (PROVIDERS.md §2, Outbound): `POST /message/sendText/{instance}` and its connection state."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any
from urllib.parse import quote

import aiohttp

from shared.events.catalog import Provider, SessionStatus
from shared.phones import parse_jid

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

CONNECTION_STATES = {
    "open": SessionStatus.WORKING,
    "connecting": SessionStatus.STARTING,
    "close": SessionStatus.STOPPED,
    "refused": SessionStatus.FAILED,
}


class EvolutionProvider:
    provider = Provider.EVOLUTION
    # No documented message search: an unanswered send cannot be settled by asking.
    can_look_up = False

    def __init__(self, http: aiohttp.ClientSession, base_url: str, *, api_key: str | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S):
        self._http = http
        self._base = base_url_of(base_url)
        self._headers = {"apikey": api_key} if api_key else {}
        self._timeout = timeout_of(timeout_s)

    async def send_text(self, session: str, phone_e164: str, text: str) -> Sent:
        number = recipient_digits(phone_e164)
        answer = await call(self._http, "POST", f"{self._base}/message/sendText/{quote(session, safe='')}",
                            headers=self._headers, timeout=self._timeout, writes=True,
                            json_body={"number": number, "text": text})
        if not answer.ok:
            raise failure(answer)
        sent = sent_of(answer.body, number)
        if sent is None:
            raise unexpected_answer(answer, "key.id", writes=True)
        return sent

    async def session_state(self, session: str) -> SessionState:
        answer = await call(self._http, "GET", f"{self._base}/instance/connectionState/{quote(session, safe='')}",
                            headers=self._headers, timeout=self._timeout, writes=False)
        if not answer.ok:
            raise failure(answer)
        instance = answer.body.get("instance") if isinstance(answer.body, dict) else None
        state = instance.get("state") if isinstance(instance, dict) else None
        if not isinstance(state, str):
            raise unexpected_answer(answer, "instance.state", writes=False)
        return session_state_of(state)

    async def find_sent(self, session: str, phone_e164: str, text: str, since: datetime, *,
                        taken: Collection[str] = ()) -> str | None:
        # PROVIDERS.md documents no message search for Evolution: reconciliation waits for its acks.
        return None


def session_state_of(state: str) -> SessionState:
    # Evolution can report `open` after the link dropped (evolution-api#1398): a send can still fail.
    known = CONNECTION_STATES.get(state, SessionStatus.FAILED)
    working = known is SessionStatus.WORKING
    return SessionState(status=known, connected=working, can_send=working, provider_status=state)


def sent_of(body: Any, number: str) -> Sent | None:
    key = body.get("key") if isinstance(body, dict) else None
    message_id = key.get("id") if isinstance(key, dict) else None
    if not isinstance(message_id, str) or not message_id:
        return None
    # Evolution may rewrite the number (Brazil's ninth digit…): the chat is the one it answers with.
    remote = key.get("remoteJid")
    return Sent(provider_message_id=message_id, chat_id=str(parse_jid(remote if isinstance(remote, str) else number)))


def failure(answer: Answer) -> SendFailed:
    """Evolution errors: `{status, error, response: {message: [str | {exists, jid, number}]}}`."""
    body = answer.body if isinstance(answer.body, dict) else {}
    response = body.get("response")
    messages = response.get("message") if isinstance(response, dict) else None
    messages = messages if isinstance(messages, list) else [messages] if messages else []
    for item in messages:
        if isinstance(item, dict) and item.get("exists") is False:
            who = item.get("number") or item.get("jid") or ""
            return SendFailed(FailureKind.INVALID_RECIPIENT, masked(f"not on WhatsApp: {who}"), status=answer.status)
    reason = "; ".join(str(m) for m in messages) or str(body.get("error") or answer.body or "")
    if "connection closed" in reason.lower():
        # Baileys' socket is down; Evolution says so with a 400 or a 500 (evolution-api#2229, #1772).
        return SendFailed(FailureKind.SESSION_NOT_READY, masked(reason), status=answer.status)
    return failure_by_status(answer, reason)
