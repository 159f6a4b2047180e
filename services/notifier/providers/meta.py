"""Meta WhatsApp Cloud API (PROVIDERS.md §4, Outbound): `POST /{version}/{phone_number_id}/messages`.

The session is the phone-number id. The Cloud API has no linked device that can drop, so
`session_state` reports a working session without asking; a token or number problem surfaces on
the next send instead (190, 133010). It has no message search either: an unknown outcome is
settled by the `statuses` webhooks only.
"""

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
    META_API_VERSION,
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
    retry_after_seconds,
    timeout_of,
    unexpected_answer,
)

# Graph API error codes (Meta's error-codes page; PROVIDERS.md §4 names 131047 and 130429).
RATE_LIMIT_CODES = frozenset({4, 80007, 130429, 131048, 131056})
AUTH_CODES = frozenset({0, 3, 10, 190, *range(200, 300)})
KIND_BY_CODE = {
    131026: FailureKind.INVALID_RECIPIENT,  # message undeliverable: not on WhatsApp, old app, blocked
    131030: FailureKind.INVALID_RECIPIENT,  # not in the test number's allowed list
    131047: FailureKind.WINDOW_CLOSED,  # more than 24 h since the user last wrote: needs a template
    133010: FailureKind.SESSION_NOT_READY,  # the business number is not registered with the Cloud API
    1: FailureKind.PROVIDER_ERROR,
    2: FailureKind.PROVIDER_ERROR,
    131000: FailureKind.PROVIDER_ERROR,
    131016: FailureKind.PROVIDER_ERROR,
}
_OBJECT_MISSING_SUBCODE = 33  # code 100: the phone-number id does not exist or the token cannot see it


class MetaProvider:
    provider = Provider.META
    # The Cloud API has no message lookup: an unanswered send cannot be settled by asking.
    can_look_up = False

    def __init__(self, http: aiohttp.ClientSession, base_url: str, *, token: str, api_version: str = META_API_VERSION,
                 timeout_s: float = DEFAULT_TIMEOUT_S):
        self._http = http
        self._base = base_url_of(base_url)
        self._version = api_version
        self._headers = {"Authorization": f"Bearer {token}"}
        self._timeout = timeout_of(timeout_s)

    async def send_text(self, session: str, phone_e164: str, text: str) -> Sent:
        to = recipient_digits(phone_e164)
        body = {"messaging_product": "whatsapp", "recipient_type": "individual", "to": to, "type": "text",
                "text": {"body": text, "preview_url": False}}
        answer = await call(self._http, "POST", f"{self._base}/{self._version}/{quote(session, safe='')}/messages",
                            headers=self._headers, timeout=self._timeout, writes=True, json_body=body)
        if not answer.ok:
            raise failure(answer)
        sent = sent_of(answer.body, to)
        if sent is None:
            raise unexpected_answer(answer, "messages[0].id", writes=True)
        return sent

    async def session_state(self, session: str) -> SessionState:
        return SessionState(status=SessionStatus.WORKING, connected=True, can_send=True, provider_status="cloud-api")

    async def find_sent(self, session: str, phone_e164: str, text: str, since: datetime, *,
                        taken: Collection[str] = ()) -> str | None:
        return None


def sent_of(body: Any, to: str) -> Sent | None:
    messages = body.get("messages") if isinstance(body, dict) else None
    first = messages[0] if isinstance(messages, list) and messages else None
    wamid = first.get("id") if isinstance(first, dict) else None
    if not isinstance(wamid, str) or not wamid:
        return None
    # `wa_id` is the number WhatsApp knows, which can differ from the one we sent to.
    contacts = body.get("contacts")
    contact = contacts[0] if isinstance(contacts, list) and contacts and isinstance(contacts[0], dict) else {}
    wa_id = contact.get("wa_id")
    return Sent(provider_message_id=wamid, chat_id=str(parse_jid(wa_id if isinstance(wa_id, str) and wa_id else to)))


def failure(answer: Answer) -> SendFailed:
    """Graph errors: `{"error": {message, type, code, error_subcode, error_data.details, fbtrace_id}}`."""
    error = answer.body.get("error") if isinstance(answer.body, dict) else None
    if not isinstance(error, dict):
        return failure_by_status(answer, str(answer.body or ""))
    code = _int(error.get("code"))
    subcode = _int(error.get("error_subcode"))
    reason = reason_of(error, code, subcode)
    if code in RATE_LIMIT_CODES:
        return SendFailed(FailureKind.RATE_LIMITED, reason, status=answer.status,
                          retry_after_s=retry_after_seconds(answer.retry_after, answer.received_at))
    if code in AUTH_CODES:
        return SendFailed(FailureKind.UNAUTHORIZED, reason, status=answer.status)
    if code == 100 and subcode == _OBJECT_MISSING_SUBCODE:
        return SendFailed(FailureKind.SESSION_NOT_FOUND, reason, status=answer.status)
    kind = KIND_BY_CODE.get(code) if code is not None else None
    if kind is None:
        return failure_by_status(answer, reason)
    return SendFailed(kind, reason, status=answer.status)


def reason_of(error: dict[str, Any], code: int | None, subcode: int | None) -> str:
    message = str(error.get("message") or error.get("error_user_msg") or "")
    data = error.get("error_data")
    details = data.get("details") if isinstance(data, dict) else None
    if details and details not in message:
        message = f"{message}: {details}" if message else str(details)
    ids = [f"code {code}" + (f"/{subcode}" if subcode is not None else "")] if code is not None else []
    if error.get("fbtrace_id"):
        ids.append(f"fbtrace_id {error['fbtrace_id']}")
    return masked(f"{message} ({', '.join(ids)})" if ids else message)


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
