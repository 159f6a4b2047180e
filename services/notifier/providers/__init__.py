"""Sending through a WhatsApp provider: one small contract, one adapter per provider (docs/providers.md).

Every adapter answers `send_text`, `session_state` and `find_sent`, and fails with one exception,
`SendFailed`, whose `kind` says what the notifier should do next: retry, hold, reconcile or give up.
"""

from __future__ import annotations

import email.utils
import json
import re
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

import aiohttp
from yarl import URL

from shared.events.catalog import Provider, SessionStatus
from shared.events.logs import mask_phone

DEFAULT_TIMEOUT_S = 15.0
# Well under the total, so a connect that hangs is told apart from a request that was written.
CONNECT_TIMEOUT_S = 5.0
META_API_VERSION = "v23.0"
# Evolution has none: its usual port, 8080, is the gateway's, and a send there would fail obscurely.
DEFAULT_BASE_URLS = {
    Provider.WAHA: "http://127.0.0.1:3000",
    Provider.META: "https://graph.facebook.com",
}
_REASON_LIMIT = 300


@dataclass(frozen=True)
class Sent:
    """The provider took the message: its id (the one its acks name) and the canonical chat id."""

    provider_message_id: str
    chat_id: str  # wabus' canonical form, `<digits>@c.us`, as the gateway's events carry it


@dataclass(frozen=True)
class SessionState:
    status: SessionStatus
    connected: bool
    can_send: bool
    provider_status: str  # the provider's own word: WORKING, SCAN_QR_CODE, open, close…


class FailureKind(StrEnum):
    UNREACHABLE = "unreachable"  # no connection, or a read timed out: nothing was sent
    OUTCOME_UNKNOWN = "outcome_unknown"  # the request went out and no answer came back: it may have been sent
    PROVIDER_ERROR = "provider_error"  # 5xx, 408
    RATE_LIMITED = "rate_limited"
    SESSION_NOT_READY = "session_not_ready"  # not linked to WhatsApp right now: hold, don't spend attempts
    INVALID_RECIPIENT = "invalid_recipient"
    WINDOW_CLOSED = "window_closed"  # Meta: 24 h since the user last wrote; only a template may go out
    UNAUTHORIZED = "unauthorized"
    SESSION_NOT_FOUND = "session_not_found"
    REJECTED = "rejected"  # any other 4xx


TRANSIENT = frozenset({FailureKind.UNREACHABLE, FailureKind.PROVIDER_ERROR, FailureKind.RATE_LIMITED,
                       FailureKind.SESSION_NOT_READY})


class SendFailed(Exception):
    """A provider call did not succeed. `transient`: nothing was sent and a later attempt may work;
    `maybe_sent`: reconcile (`find_sent`, acks) before sending again; neither: give up."""

    def __init__(self, kind: FailureKind, reason: str, *, retry_after_s: float | None = None,
                 status: int | None = None):
        super().__init__(f"{kind.value}: {reason}")
        self.kind = kind
        self.reason = reason
        self.retry_after_s = retry_after_s
        self.status = status

    @property
    def transient(self) -> bool:
        return self.kind in TRANSIENT

    @property
    def maybe_sent(self) -> bool:
        return self.kind is FailureKind.OUTCOME_UNKNOWN


class SendingProvider(Protocol):
    provider: Provider
    can_look_up: bool  # whether `find_sent` can tell a message that never went out from one it cannot see

    async def send_text(self, session: str, phone_e164: str, text: str) -> Sent: ...

    async def session_state(self, session: str) -> SessionState: ...

    async def find_sent(self, session: str, phone_e164: str, text: str, since: datetime, *,
                        taken: Collection[str] = ()) -> str | None:
        """Our message with this text to this number since `since`, the earliest whose id is not in
        `taken` (ids other notifications already hold: two identical texts both match)."""
        ...


def build_provider(name: str | Provider, *, http: aiohttp.ClientSession | None = None, base_url: str | None = None,
                   api_key: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
                   meta_api_version: str = META_API_VERSION) -> SendingProvider:
    """The adapter for `WABUS_PROVIDER`; the caller owns `http` and closes it."""
    # Imported here: each adapter imports this module's types.
    from .evolution import EvolutionProvider
    from .log import LogProvider
    from .meta import MetaProvider
    from .waha import WahaProvider

    provider = Provider(name)
    if provider is Provider.LOG:
        return LogProvider()
    url = base_url or DEFAULT_BASE_URLS.get(provider)
    if url is None:
        raise ValueError(f"the {provider} provider needs its base URL (WABUS_PROVIDER_URL)")
    if http is None:
        raise ValueError(f"the {provider} provider sends over HTTP and needs a client session")
    match provider:
        case Provider.WAHA:
            return WahaProvider(http, url, api_key=api_key, timeout_s=timeout_s)
        case Provider.EVOLUTION:
            return EvolutionProvider(http, url, api_key=api_key, timeout_s=timeout_s)
        case Provider.META:
            if not api_key:
                raise ValueError("the meta provider needs an access token")
            return MetaProvider(http, url, token=api_key, api_version=meta_api_version, timeout_s=timeout_s)
    raise AssertionError(provider)


# --- what the adapters share ------------------------------------------------------------------

_E164 = re.compile(r"\+[1-9]\d{6,14}")
_LONG_DIGITS = re.compile(r"\d{8,}")


def recipient_digits(phone_e164: str) -> str:
    """`+212600000000` → `212600000000`; anything else fails here, before a request is made."""
    if not _E164.fullmatch(phone_e164):
        raise SendFailed(FailureKind.INVALID_RECIPIENT, f"not an E.164 number: {mask_phone(phone_e164)!r}")
    return phone_e164[1:]


def base_url_of(value: str) -> str:
    url = URL(value)
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"a provider base URL must be absolute http(s): {value!r}")
    return str(url).rstrip("/")


def timeout_of(total_s: float) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=total_s, connect=min(CONNECT_TIMEOUT_S, total_s / 2))


def masked(text: str) -> str:
    """Provider reasons can quote the number or a chat id; keep them out of logs and tables."""
    text = _LONG_DIGITS.sub(lambda m: mask_phone(m.group()) or "", text.strip())
    return text if len(text) <= _REASON_LIMIT else text[: _REASON_LIMIT - 1] + "…"


@dataclass(frozen=True)
class Answer:
    """A provider's HTTP answer, reduced to what classifying it needs."""

    status: int
    body: Any  # parsed JSON, else the text
    retry_after: str | None  # the header as sent
    received_at: datetime

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


async def call(http: aiohttp.ClientSession, method: str, url: str, *, headers: dict[str, str],
               timeout: aiohttp.ClientTimeout, writes: bool, json_body: Any = None,
               params: dict[str, str] | None = None) -> Answer:
    """One request with a deadline. `writes`: a request that may have been acted on even if no answer came."""
    try:
        async with http.request(method, url, headers=headers, json=json_body, params=params, timeout=timeout,
                                allow_redirects=False) as response:
            raw = await response.read()
            return Answer(response.status, _decoded(raw), response.headers.get("Retry-After"), datetime.now(UTC))
    except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
        raise SendFailed(FailureKind.UNREACHABLE, f"cannot connect to {URL(url).host}: {_describe(exc)}") from None
    except (TimeoutError, aiohttp.ClientError) as exc:
        if writes:
            # The request was written; the provider may have sent the message before we gave up.
            raise SendFailed(FailureKind.OUTCOME_UNKNOWN, f"no answer: {_describe(exc)}") from None
        raise SendFailed(FailureKind.UNREACHABLE, f"no answer: {_describe(exc)}") from None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError) and not str(exc):
        return "timed out"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _decoded(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """`Retry-After` as seconds from `now`: delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return max(0.0, (when - now).total_seconds())
    return seconds if seconds >= 0 else None


def failure_by_status(answer: Answer, reason: str) -> SendFailed:
    """The HTTP status alone, for errors a provider does not describe more precisely."""
    reason = masked(reason) or f"HTTP {answer.status}"
    status = answer.status
    retry_after = retry_after_seconds(answer.retry_after, answer.received_at)
    if status == 429:
        return SendFailed(FailureKind.RATE_LIMITED, reason, retry_after_s=retry_after, status=status)
    if status in (401, 403):
        return SendFailed(FailureKind.UNAUTHORIZED, reason, status=status)
    if status == 404:
        return SendFailed(FailureKind.SESSION_NOT_FOUND, reason, status=status)
    if status == 408 or status >= 500:
        return SendFailed(FailureKind.PROVIDER_ERROR, reason, retry_after_s=retry_after, status=status)
    return SendFailed(FailureKind.REJECTED, reason, status=status)


def unexpected_answer(answer: Answer, what: str, *, writes: bool) -> SendFailed:
    """A 2xx without the field we need: after a send, the message most likely went out."""
    kind = FailureKind.OUTCOME_UNKNOWN if writes else FailureKind.PROVIDER_ERROR
    return SendFailed(kind, f"HTTP {answer.status} without {what}", status=answer.status)
