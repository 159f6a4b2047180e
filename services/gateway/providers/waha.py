"""WAHA webhooks (PROVIDERS.md §1): one event per POST, `{event, session, payload, …}`."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from shared.events.catalog import (
    Direction,
    Location,
    Media,
    MessageKind,
    Provider,
    SessionStatus,
    WhatsAppMessage,
    WhatsAppMessageAck,
    WhatsAppMessageReceived,
    WhatsAppSessionStatusChanged,
)
from shared.phones import Jid, parse_jid, phone_of

from ..domain import (
    ACK_BY_NAME,
    LOOSE,
    SESSION_BY_NAME,
    WAHA_ACK_NAMES,
    Accepted,
    Ignored,
    ParsedWebhook,
    Tenant,
    digest,
    from_unix,
    own_session,
    validated,
)


class Envelope(BaseModel):
    model_config = LOOSE
    event: str = Field(min_length=1)
    session: str = Field(min_length=1)
    id: str | None = None
    timestamp: int | None = None
    me: dict[str, Any] | None = None
    payload: Any = None


class WahaMedia(BaseModel):
    model_config = LOOSE
    url: str | None = None
    mimetype: str | None = None
    filename: str | None = None


class WahaLocation(BaseModel):
    model_config = LOOSE
    latitude: float
    longitude: float
    name: str | None = None
    address: str | None = None


class WahaReply(BaseModel):
    model_config = LOOSE
    id: str | None = None


class WahaMessage(BaseModel):
    model_config = LOOSE
    id: str = Field(min_length=1)
    timestamp: float | None = None
    sender: str = Field(alias="from", min_length=1)
    to: str | None = None
    fromMe: bool = False
    participant: str | None = None
    author: str | None = None
    source: str | None = None
    body: str | None = None
    hasMedia: bool = False
    media: WahaMedia | None = None
    location: WahaLocation | None = None
    replyTo: WahaReply | None = None
    raw: dict[str, Any] | None = Field(default=None, alias="_data")


class WahaReaction(BaseModel):
    model_config = LOOSE
    text: str
    messageId: str = Field(min_length=1)


class WahaReactionPayload(WahaMessage):
    reaction: WahaReaction


class WahaEdited(BaseModel):
    model_config = LOOSE
    id: str = Field(min_length=1)
    editedMessageId: str = Field(min_length=1)
    body: str | None = None
    timestamp: float | None = None
    sender: str | None = Field(default=None, alias="from")


class WahaAction(BaseModel):
    model_config = LOOSE
    id: str = Field(min_length=1)
    timestamp: float | None = None


class WahaRevoked(BaseModel):
    model_config = LOOSE
    after: WahaAction
    revokedMessageId: str = Field(min_length=1)


class WahaAck(BaseModel):
    model_config = LOOSE
    id: str = Field(min_length=1)
    sender: str | None = Field(default=None, alias="from")
    participant: str | None = None
    ack: int | None = None
    ackName: str | None = None


class WahaSessionStatus(BaseModel):
    model_config = LOOSE
    status: str = Field(min_length=1)
    statuses: list[dict[str, Any]] = []


def split_id(serialized: str) -> tuple[bool | None, str | None, str, str | None]:
    """`{fromMe}_{chat}_{id}[_{participant}]` → (from_me, chat, bare id, participant); a bare id stays bare."""
    parts = serialized.split("_")
    if len(parts) >= 3 and parts[0] in ("true", "false") and "@" in parts[1]:
        return parts[0] == "true", parts[1], parts[2], (parts[3] if len(parts) > 3 else None)
    return None, None, serialized, None


def parse(body: Any, tenant: Tenant, received_at: datetime) -> ParsedWebhook:
    envelope = validated(Envelope, body)
    own_session(tenant, "session", envelope.session)
    parsed = ParsedWebhook(kind=envelope.event)
    at = from_unix(envelope.timestamp) or received_at
    payload = envelope.payload
    if not payload and envelope.event != "session.status":
        parsed.ignored.append(Ignored(envelope.event, "empty payload"))
        return parsed
    match envelope.event:
        case "message" | "message.any":
            _message(parsed, validated(WahaMessage, payload, "payload"), envelope, at)
        case "message.reaction":
            _reaction(parsed, validated(WahaReactionPayload, payload, "payload"), at)
        case "message.edited":
            _edited(parsed, validated(WahaEdited, payload, "payload"), at)
        case "message.revoked":
            _revoked(parsed, validated(WahaRevoked, payload, "payload"), at)
        case "message.ack" | "message.ack.group":
            _ack(parsed, validated(WahaAck, payload, "payload"), at)
        case "session.status":
            _session(parsed, validated(WahaSessionStatus, payload, "payload"), envelope, at)
        case _:
            parsed.ignored.append(Ignored(envelope.event, "event kind not used"))
    return parsed


def _message(parsed: ParsedWebhook, m: WahaMessage, envelope: Envelope, at: datetime) -> None:
    raw_message = (m.raw or {}).get("message") or {}
    if not m.body and not m.hasMedia and m.location is None and "call" in raw_message:
        parsed.ignored.append(Ignored(envelope.event, "call notification"))
        return
    from_me, chat_from_id, bare_id, _ = split_id(m.id)
    from_me = m.fromMe if from_me is None else from_me
    chat = parse_jid(chat_from_id or ((m.to or m.sender) if from_me else m.sender))
    participant = parse_jid(m.participant or m.author) if chat.is_group and (m.participant or m.author) else None
    person = participant or chat
    if from_me:
        person = parse_jid((envelope.me or {}).get("id") or m.sender)
    lid, lid_phone = _lid_alternative(m.raw, person)
    kind = MessageKind.TEXT
    media = None
    if m.hasMedia:
        kind = MessageKind.MEDIA
        media = Media(url=m.media.url if m.media else None, mimetype=m.media.mimetype if m.media else None,
                      filename=m.media.filename if m.media else None, caption=m.body or None)
    location = None
    if m.location is not None:
        kind = MessageKind.LOCATION
        location = Location(latitude=m.location.latitude, longitude=m.location.longitude,
                            name=m.location.name, address=m.location.address)
    reply_to = split_id(m.replyTo.id)[2] if m.replyTo and m.replyTo.id else None
    message = WhatsAppMessage(
        provider=Provider.WAHA, provider_message_id=bare_id, chat_id=str(chat),
        sender=phone_of(person) or lid_phone, sender_name=_push_name(m, envelope, from_me),
        is_group=chat.is_group, participant=str(participant) if participant else None,
        direction=Direction.OUTBOUND if from_me else Direction.INBOUND, kind=kind,
        text=None if kind is MessageKind.MEDIA else m.body, media=media, location=location, reply_to=reply_to,
        sent_at=from_unix(m.timestamp) or at,
    )
    parsed.events.append(Accepted(f"msg:{bare_id}", WhatsAppMessageReceived(message=message), lid, lid_phone))


def _push_name(m: WahaMessage, envelope: Envelope, from_me: bool) -> str | None:
    if from_me:
        return (envelope.me or {}).get("pushName")
    raw = m.raw or {}
    return raw.get("notifyName") or raw.get("pushName")


def _lid_alternative(raw: dict[str, Any] | None, person: Jid) -> tuple[str | None, str | None]:
    """NOWEB/GOWS name a LID sender's phone form beside it (`remoteJidAlt`, `senderPn`…)."""
    if not person.is_lid or not raw:
        return None, None
    key = raw.get("key") or {}
    for candidate in (key.get("remoteJidAlt"), key.get("participantAlt"), key.get("senderPn"), raw.get("senderPn")):
        if candidate:
            phone = phone_of(parse_jid(candidate))
            if phone:
                return str(person), phone
    return None, None


def _reaction(parsed: ParsedWebhook, r: WahaReactionPayload, at: datetime) -> None:
    from_me, chat_from_id, bare_id, _ = split_id(r.id)
    chat = parse_jid(chat_from_id or r.sender)
    participant = parse_jid(r.participant) if chat.is_group and r.participant else None
    message = WhatsAppMessage(
        provider=Provider.WAHA, provider_message_id=bare_id, chat_id=str(chat),
        sender=phone_of(participant or chat) if not r.fromMe else None, is_group=chat.is_group,
        participant=str(participant) if participant else None,
        direction=Direction.OUTBOUND if r.fromMe else Direction.INBOUND, kind=MessageKind.REACTION,
        target_message_id=split_id(r.reaction.messageId)[2], reaction=r.reaction.text,
        sent_at=from_unix(r.timestamp) or at,
    )
    parsed.events.append(Accepted(f"reaction:{bare_id}", WhatsAppMessageReceived(message=message)))


def _edited(parsed: ParsedWebhook, e: WahaEdited, at: datetime) -> None:
    from_me, chat_from_id, action_id, _ = split_id(e.id)
    chat = parse_jid(chat_from_id or e.sender or "unknown@c.us")
    message = WhatsAppMessage(
        provider=Provider.WAHA, provider_message_id=action_id, chat_id=str(chat), is_group=chat.is_group,
        direction=Direction.OUTBOUND if from_me else Direction.INBOUND, kind=MessageKind.EDIT,
        text=e.body, target_message_id=split_id(e.editedMessageId)[2], sent_at=from_unix(e.timestamp) or at,
    )
    parsed.events.append(Accepted(f"edit:{action_id}", WhatsAppMessageReceived(message=message)))


def _revoked(parsed: ParsedWebhook, r: WahaRevoked, at: datetime) -> None:
    from_me, chat_from_id, action_id, _ = split_id(r.after.id)
    chat = parse_jid(chat_from_id or "unknown@c.us")
    message = WhatsAppMessage(
        provider=Provider.WAHA, provider_message_id=action_id, chat_id=str(chat), is_group=chat.is_group,
        direction=Direction.OUTBOUND if from_me else Direction.INBOUND, kind=MessageKind.REVOKE,
        target_message_id=split_id(r.revokedMessageId)[2], sent_at=from_unix(r.after.timestamp) or at,
    )
    parsed.events.append(Accepted(f"revoke:{action_id}", WhatsAppMessageReceived(message=message)))


def _ack(parsed: ParsedWebhook, a: WahaAck, at: datetime) -> None:
    name = a.ackName or WAHA_ACK_NAMES.get(a.ack if a.ack is not None else -2, "")
    status = ACK_BY_NAME.get(name)
    if status is None:
        parsed.ignored.append(Ignored(parsed.kind, f"unknown ack {name or a.ack!r}"))
        return
    _, chat_from_id, bare_id, participant = split_id(a.id)
    chat = chat_from_id or a.sender
    event = WhatsAppMessageAck(provider=Provider.WAHA, provider_message_id=bare_id,
                               chat_id=str(parse_jid(chat)) if chat else None, status=status, at=at)
    who = participant or a.participant or ""
    parsed.events.append(Accepted(f"ack:{bare_id}:{who}:{status.value}", event))


def _session(parsed: ParsedWebhook, s: WahaSessionStatus, envelope: Envelope, at: datetime) -> None:
    status = SESSION_BY_NAME.get(s.status)
    if status is None:
        parsed.ignored.append(Ignored(parsed.kind, f"unknown session status {s.status!r}"))
        return
    # The status history carries when this status began; it makes a repeat recognisable.
    began = next((x.get("timestamp") for x in reversed(s.statuses) if x.get("status") == s.status), None)
    since = from_unix(began) or at
    event = WhatsAppSessionStatusChanged(provider=Provider.WAHA, session=envelope.session, status=status,
                                         connected=status is SessionStatus.WORKING, at=since)
    repeatable = began or envelope.id or digest(envelope.model_dump(mode="json", by_alias=True))
    parsed.events.append(Accepted(f"session:{envelope.session}:{s.status}:{repeatable}", event))
