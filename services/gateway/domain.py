"""What a webhook means, independent of who sent it: pure values and pure functions."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from shared.events.catalog import AckStatus, Provider, SessionStatus
from shared.events.envelope import Event

M = TypeVar("M", bound=BaseModel)

# Providers add fields release by release: read what wabus needs, keep the rest, reject nothing extra.
LOOSE = ConfigDict(extra="allow", populate_by_name=True)


@dataclass(frozen=True)
class Tenant:
    id: str
    provider: Provider
    session: str  # WAHA session, Evolution instance or Meta phone-number id
    webhook_secret: str | None
    verify_token: str | None
    default_region: str
    locale: str


class BadShape(ValueError):
    """422: the webhook is JSON but not the provider's shape; names the first field that is wrong."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class ForeignSession(Exception):
    """403: a webhook for a session that is not the tenant's. One WAHA or Evolution server can host
    several tenants' sessions and post them all to one URL; keeping them files one tenant's patients
    under another's."""

    def __init__(self, field: str, session: str):
        super().__init__(f"{field} {session!r} is not this tenant's")
        self.field = field
        self.reason = str(self)


def own_session(tenant: Tenant, field: str, session: str) -> None:
    # Exact: WAHA session and Evolution instance names are case-sensitive.
    if session != tenant.session:
        raise ForeignSession(field, session)


def validated(model: type[M], value: Any, at: str = "") -> M:
    """Validate a part of a webhook, naming a failing field by its full path in the body."""
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        first = exc.errors()[0]
        path = ".".join(str(p) for p in (*([at] if at else []), *first["loc"]))
        raise BadShape(path or "(body)", first["msg"]) from None


@dataclass(frozen=True)
class Accepted:
    """One event a webhook carries, with the key that makes a repeat of it recognisable."""

    dedupe_key: str
    event: Event
    lid: str | None = None  # the sender's LID, where the payload named it beside the phone form
    lid_phone: str | None = None


@dataclass(frozen=True)
class Ignored:
    """A webhook kind wabus does not act on: answered 2xx (or the provider retries it) and counted."""

    kind: str
    reason: str


@dataclass
class ParsedWebhook:
    kind: str  # the provider's own event name
    events: list[Accepted] = field(default_factory=list)
    ignored: list[Ignored] = field(default_factory=list)


def digest(value: Any) -> str:
    """A stable key for a webhook that carries no id of its own: a repeat hashes the same."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:32]


def from_unix(seconds: float | str | int | None) -> datetime | None:
    """Provider times: seconds (int, float or string); large values are milliseconds."""
    if seconds is None or seconds == "":
        return None
    value = float(seconds)
    if value > 10**11:
        value /= 1000
    return datetime.fromtimestamp(value, UTC)


# Providers number acks differently (WAHA -1..4, Baileys 0..5): only names are compared.
ACK_BY_NAME: dict[str, AckStatus] = {
    # WAHA ackName
    "ERROR": AckStatus.FAILED, "PENDING": AckStatus.PENDING, "SERVER": AckStatus.SERVER,
    "DEVICE": AckStatus.DELIVERED, "READ": AckStatus.READ, "PLAYED": AckStatus.PLAYED,
    # Evolution / Baileys status names
    "SERVER_ACK": AckStatus.SERVER, "DELIVERY_ACK": AckStatus.DELIVERED,
    # Meta statuses
    "sent": AckStatus.SERVER, "delivered": AckStatus.DELIVERED, "read": AckStatus.READ, "failed": AckStatus.FAILED,
}

BAILEYS_STATUS_NAMES = ("ERROR", "PENDING", "SERVER_ACK", "DELIVERY_ACK", "READ", "PLAYED")
WAHA_ACK_NAMES = {-1: "ERROR", 0: "PENDING", 1: "SERVER", 2: "DEVICE", 3: "READ", 4: "PLAYED"}

SESSION_BY_NAME: dict[str, SessionStatus] = {
    # WAHA session.status
    "STOPPED": SessionStatus.STOPPED, "STARTING": SessionStatus.STARTING, "SCAN_QR_CODE": SessionStatus.SCAN_QR,
    "PASSKEY_REQUIRED": SessionStatus.SCAN_QR, "PASSKEY_CONFIRMATION_REQUIRED": SessionStatus.SCAN_QR,
    "WORKING": SessionStatus.WORKING, "FAILED": SessionStatus.FAILED,
    # Evolution connection.update state
    "open": SessionStatus.WORKING, "connecting": SessionStatus.STARTING, "close": SessionStatus.STOPPED,
    "refused": SessionStatus.FAILED,
}
