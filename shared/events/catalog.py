"""Every event wabus publishes, and where each one travels (DESIGN.md, Events).

One table maps event type ⇄ model ⇄ exchange ⇄ routing key; the routing key is the type.
A new event, or a new version of one, enters here and in docs/events.md first.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from .envelope import Envelope, Event, UtcDatetime
from .errors import InvalidEvent, UnknownEventType, UnsupportedEventVersion


def exchange_of(service: str) -> str:
    return f"wabus.{service}"


# --- shared parts -----------------------------------------------------------------------------

PART = ConfigDict(frozen=True, extra="forbid")


class Provider(StrEnum):
    WAHA = "waha"
    EVOLUTION = "evolution"
    META = "meta"
    LOG = "log"


class Direction(StrEnum):
    INBOUND = "inbound"
    OUTBOUND = "outbound"


class MessageKind(StrEnum):
    TEXT = "text"
    MEDIA = "media"
    LOCATION = "location"
    REACTION = "reaction"
    EDIT = "edit"
    REVOKE = "revoke"
    OTHER = "other"


class Media(BaseModel):
    model_config = PART
    url: str | None = None
    mimetype: str | None = None
    filename: str | None = None
    caption: str | None = None


class Location(BaseModel):
    model_config = PART
    latitude: float
    longitude: float
    name: str | None = None
    address: str | None = None


class WhatsAppMessage(BaseModel):
    """One message in the same shape whichever provider carried it."""

    model_config = PART

    provider: Provider
    provider_message_id: str = Field(min_length=1)
    chat_id: str = Field(min_length=1)
    sender: str | None = None  # E.164
    sender_name: str | None = None
    is_group: bool = False
    participant: str | None = None
    direction: Direction = Direction.INBOUND
    kind: MessageKind = MessageKind.TEXT
    text: str | None = None
    media: Media | None = None
    location: Location | None = None
    reply_to: str | None = None
    target_message_id: str | None = None  # what an edit, revoke or reaction points at
    reaction: str | None = None  # "" removes a reaction
    sent_at: UtcDatetime


class AckStatus(StrEnum):
    FAILED = "failed"
    PENDING = "pending"
    SERVER = "server"
    DELIVERED = "delivered"
    READ = "read"
    PLAYED = "played"


class SessionStatus(StrEnum):
    STARTING = "starting"
    SCAN_QR = "scan_qr"
    WORKING = "working"
    FAILED = "failed"
    STOPPED = "stopped"


# --- gateway ----------------------------------------------------------------------------------


class WhatsAppMessageReceived(Event):
    type = "whatsapp.message.received"
    message: WhatsAppMessage

    def shard_key(self) -> str:
        return self.message.chat_id


class WhatsAppMessageAck(Event):
    type = "whatsapp.message.ack"
    provider: Provider
    provider_message_id: str = Field(min_length=1)
    chat_id: str | None = None
    status: AckStatus
    at: UtcDatetime


class WhatsAppSessionStatusChanged(Event):
    type = "whatsapp.session.status"
    provider: Provider
    session: str = Field(min_length=1)
    status: SessionStatus
    connected: bool
    at: UtcDatetime


# --- processor --------------------------------------------------------------------------------


class Intent(BaseModel):
    model_config = PART
    name: str = Field(min_length=1)  # join_queue, position, leave, subscribe, help, stop, start
    arguments: dict[str, str] = Field(default_factory=dict)


class MessageProcessed(Event):
    type = "message.processed"
    message: WhatsAppMessage
    conversation_id: str
    intent: Intent | None = None
    language: str | None = None
    reply_text: str | None = None
    processing_ms: float = Field(ge=0)

    def shard_key(self) -> str:
        return self.message.chat_id

    def selectors(self) -> dict[str, str]:
        # Most messages ask for nothing: consumers of intents and replies select these and skip the rest.
        selected = {INTENT_HEADER: self.intent.name} if self.intent else {}
        if self.reply_text:
            selected[REPLY_HEADER] = "yes"
        return selected


INTENT_HEADER = "wabus-intent"  # MessageProcessed: the intent's name, when the bot recognised one
REPLY_HEADER = "wabus-reply"  # MessageProcessed: "yes" when the bot has a reply to send


# --- scheduler --------------------------------------------------------------------------------


# A department's code as staff and patients type it (`opd`), kept upper-case (`OPD`).
DepartmentCode = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,15}$"), AfterValidator(str.upper)]


class Patient(BaseModel):
    """Who a ticket or a notice is for: enough to reach them and to speak their language."""

    model_config = PART
    chat_id: str = Field(min_length=1)
    phone: str | None = None  # E.164
    name: str | None = None
    language: str | None = None


class TicketVia(StrEnum):
    WHATSAPP = "whatsapp"
    STAFF = "staff"
    TRANSFER = "transfer"


class RefusalCode(StrEnum):
    QUEUE_CLOSED = "queue_closed"
    UNKNOWN_DEPARTMENT = "unknown_department"
    ALREADY_IN_QUEUE = "already_in_queue"


class TicketOutcome(StrEnum):
    SERVED = "served"
    NO_SHOW = "no_show"
    CANCELLED = "cancelled"
    TRANSFERRED = "transferred"


class QueueOpened(Event):
    type = "queue.opened"
    department: str = Field(min_length=1)
    department_name: str
    opened_at: UtcDatetime
    opened_by: str
    reason: str | None = None
    message: str | None = None
    closes_at: UtcDatetime | None = None
    subscribers: list[Patient] = Field(default_factory=list)  # told once: their subscriptions end here


class QueueClosed(Event):
    type = "queue.closed"
    department: str = Field(min_length=1)
    department_name: str
    closed_at: UtcDatetime
    closed_by: str
    reason: str | None = None
    message: str | None = None
    cancelled_tickets: int = Field(0, ge=0)
    carried_over_tickets: int = Field(0, ge=0)


class QueueStatusChanged(Event):
    type = "queue.status.changed"
    department: str = Field(min_length=1)
    department_name: str
    is_open: bool
    message: str | None = None
    waiting: int = Field(ge=0)
    estimated_wait_s: float | None = Field(default=None, ge=0)
    current_ticket: str | None = None


class TicketIssued(Event):
    type = "ticket.issued"
    department: str = Field(min_length=1)
    department_name: str
    ticket: str
    ticket_id: str
    patient: Patient
    position: int = Field(ge=1)
    estimated_wait_s: float | None = Field(default=None, ge=0)
    via: TicketVia

    def shard_key(self) -> str:
        return self.patient.chat_id


class TicketRefused(Event):
    type = "ticket.refused"
    department: str = Field(min_length=1)  # as the patient asked for it
    department_name: str | None = None
    patient: Patient
    code: RefusalCode
    reason: str
    ticket: str | None = None  # the ticket the patient already holds
    position: int | None = Field(default=None, ge=1)
    known_departments: list[str] = Field(default_factory=list)

    def shard_key(self) -> str:
        return self.patient.chat_id


class TurnApproaching(Event):
    """A waiting ticket reached the department's "almost your turn" position."""

    type = "turn.approaching"
    department: str = Field(min_length=1)
    department_name: str
    ticket: str
    ticket_id: str
    patient: Patient
    position: int = Field(ge=1)
    estimated_wait_s: float | None = Field(default=None, ge=0)

    def shard_key(self) -> str:
        return self.patient.chat_id


class TurnReached(Event):
    type = "turn.reached"
    department: str = Field(min_length=1)
    department_name: str
    ticket: str
    ticket_id: str
    patient: Patient
    counter: str | None = None
    recall: int = Field(0, ge=0)  # 0 on the first call

    def shard_key(self) -> str:
        return self.patient.chat_id


class TicketEnded(Event):
    type = "ticket.ended"
    department: str = Field(min_length=1)
    department_name: str
    ticket: str
    ticket_id: str
    patient: Patient
    outcome: TicketOutcome
    by: str
    reason: str | None = None

    def shard_key(self) -> str:
        return self.patient.chat_id


class PositionReported(Event):
    """The answer to a patient asking where they stand; no ticket means they are not waiting."""

    type = "position.reported"
    department: str | None = None
    department_name: str | None = None
    patient: Patient
    ticket: str | None = None
    position: int | None = Field(default=None, ge=1)
    estimated_wait_s: float | None = Field(default=None, ge=0)
    is_open: bool | None = None

    def shard_key(self) -> str:
        return self.patient.chat_id


class OpeningSubscribed(Event):
    type = "opening.subscribed"
    department: str = Field(min_length=1)
    department_name: str
    patient: Patient
    is_open: bool  # already open: the patient can join right away

    def shard_key(self) -> str:
        return self.patient.chat_id


# --- notifier ---------------------------------------------------------------------------------


class NotificationStatusChanged(Event):
    type = "notification.status"
    notification_id: str
    status: str
    provider_message_id: str | None = None
    reason: str | None = None


class BroadcastStatusChanged(Event):
    type = "broadcast.status"
    broadcast_id: str
    status: str
    total: int = Field(ge=0)
    sent: int = Field(ge=0)
    failed: int = Field(ge=0)


# --- the catalogue ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    model: type[Event]
    exchange: str

    @property
    def routing_key(self) -> str:
        return self.model.type


def _routes(service: str, *models: type[Event]) -> dict[tuple[str, int], Route]:
    return {(m.type, m.version): Route(m, exchange_of(service)) for m in models}


CATALOG: dict[tuple[str, int], Route] = {
    **_routes("gateway", WhatsAppMessageReceived, WhatsAppMessageAck, WhatsAppSessionStatusChanged),
    **_routes("processor", MessageProcessed),
    **_routes("scheduler", QueueOpened, QueueClosed, QueueStatusChanged, TicketIssued, TicketRefused,
              TurnApproaching, TurnReached, TicketEnded, PositionReported, OpeningSubscribed),
    **_routes("notifier", NotificationStatusChanged, BroadcastStatusChanged),
}


def route_of(event_type: str, version: int) -> Route:
    route = CATALOG.get((event_type, version))
    if route is None:
        versions = sorted(v for (t, v) in CATALOG if t == event_type)
        if not versions:
            raise UnknownEventType(event_type)
        raise UnsupportedEventVersion(event_type, version, versions)
    return route


# How wabus itself writes an envelope's start. Read from there, the type is known before the body is parsed,
# and pydantic parses the JSON itself, about three times faster than json.loads and a validation of the dict.
_HEAD = re.compile(rb'\{"id":"[^"\\]*","type":"([a-z0-9._-]{1,100})","version":(\d{1,9}),')


@functools.cache
def _envelope_of(model: type[Event]) -> type[Envelope]:
    return Envelope[model]  # type: ignore[valid-type]  # parametrising on every call costs a few µs


def decode(body: bytes | str) -> Envelope:
    """Parse an envelope into its typed model, or say exactly why it cannot be."""
    head = _HEAD.match(body) if isinstance(body, bytes) else None
    if head is not None:
        event_type, version = head[1].decode(), int(head[2])
        route = CATALOG.get((event_type, version))
        if route is not None:
            try:
                envelope = _envelope_of(route.model).model_validate_json(body)
            except ValidationError:
                pass  # the full parse below says what is wrong
            else:
                if envelope.type == event_type and envelope.version == version:
                    return envelope
    try:
        raw: Any = json.loads(body)
    except ValueError as exc:
        raise InvalidEvent(f"body is not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise InvalidEvent("envelope must be a JSON object")
    event_type, version = raw.get("type"), raw.get("version")
    if not isinstance(event_type, str):
        raise UnknownEventType(event_type)
    if not isinstance(version, int) or isinstance(version, bool):
        raise UnsupportedEventVersion(event_type, version, [])
    route = route_of(event_type, version)
    try:
        return _envelope_of(route.model).model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidEvent(f"{event_type} v{version}: {where}: {first['msg']}") from None
