"""Evolution API webhooks (PROVIDERS.md §2, §3): `{event, instance, data, …}`, Baileys shapes inside."""

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
from shared.phones import parse_jid, phone_of

from ..domain import (
    ACK_BY_NAME,
    BAILEYS_STATUS_NAMES,
    LOOSE,
    SESSION_BY_NAME,
    Accepted,
    Ignored,
    ParsedWebhook,
    Tenant,
    digest,
    from_unix,
    own_session,
    validated,
)

# Baileys DisconnectReason: logged out means the device must be paired again.
_LOGGED_OUT = 401


class Envelope(BaseModel):
    model_config = LOOSE
    event: str = Field(min_length=1)
    instance: str = Field(min_length=1)
    data: Any = None
    # `date_time` is the server's local time wearing a `Z`: never used as a time.


class Key(BaseModel):
    model_config = LOOSE
    remoteJid: str = Field(min_length=1)
    fromMe: bool = False
    id: str = Field(min_length=1)
    participant: str | None = None
    remoteJidAlt: str | None = None
    participantAlt: str | None = None


class Upsert(BaseModel):
    model_config = LOOSE
    key: Key
    pushName: str | None = None
    message: dict[str, Any] | None = None
    messageType: str | None = None
    messageTimestamp: int | str | None = None
    participant: str | None = None
    contextInfo: dict[str, Any] | None = None


class Update(BaseModel):
    """Evolution's own `messages.update` data."""

    model_config = LOOSE
    keyId: str = Field(min_length=1)
    remoteJid: str | None = None
    fromMe: bool = False
    participant: str | None = None
    status: str | int | None = None


class BaileysUpdate(BaseModel):
    """The raw Baileys `messages.update` element `{key, update}` that some bridges forward."""

    model_config = LOOSE
    key: Key
    update: dict[str, Any]


class Connection(BaseModel):
    model_config = LOOSE
    state: str = Field(min_length=1)
    statusReason: int | None = None


def parse(body: Any, tenant: Tenant, received_at: datetime) -> ParsedWebhook:
    envelope = validated(Envelope, body)
    own_session(tenant, "instance", envelope.instance)
    parsed = ParsedWebhook(kind=envelope.event)
    data = envelope.data
    match envelope.event:
        case "messages.upsert" | "send.message" | "messages.edited":
            for i, item in enumerate(data if isinstance(data, list) else [data]):
                _upsert(parsed, validated(Upsert, item, f"data.{i}" if isinstance(data, list) else "data"), received_at)
        case "messages.update":
            for i, item in enumerate(data if isinstance(data, list) else [data]):
                where = f"data.{i}" if isinstance(data, list) else "data"
                if isinstance(item, dict) and "update" in item and "key" in item:
                    raw = validated(BaileysUpdate, item, where)
                    _update(parsed, raw.key.id, raw.key.remoteJid, raw.update.get("status"),
                            "message" in raw.update, received_at)
                else:
                    u = validated(Update, item, where)
                    _update(parsed, u.keyId, u.remoteJid, u.status, False, received_at)
        case "messages.delete":
            key = validated(Key, data.get("key", data) if isinstance(data, dict) else data, "data")
            _target(parsed, MessageKind.REVOKE, key, key.id, None, received_at, action_id=f"delete:{key.id}")
        case "connection.update":
            _connection(parsed, validated(Connection, data, "data"), envelope.instance, received_at, digest(body))
        case _:
            parsed.ignored.append(Ignored(envelope.event, "event kind not used"))
    return parsed


def _upsert(parsed: ParsedWebhook, u: Upsert, received_at: datetime) -> None:
    content = u.message or {}
    sent_at = from_unix(u.messageTimestamp) or received_at
    protocol = content.get("protocolMessage")
    if protocol:
        target = validated(Key, {"remoteJid": u.key.remoteJid, **protocol["key"]}, "data.message.protocolMessage.key") \
            if isinstance(protocol.get("key"), dict) else None
        if protocol.get("type") in ("REVOKE", 0) and target:
            _target(parsed, MessageKind.REVOKE, u.key, target.id, None, sent_at)
            return
        edited = protocol.get("editedMessage")
        if edited is not None and target:
            _target(parsed, MessageKind.EDIT, u.key, target.id, _text(edited), sent_at)
            return
        parsed.ignored.append(Ignored(parsed.kind, f"protocol message {protocol.get('type')!r}"))
        return
    if "reactionMessage" in content:
        reaction = content["reactionMessage"]
        target_id = (reaction.get("key") or {}).get("id")
        if target_id:
            _target(parsed, MessageKind.REACTION, u.key, target_id, None, sent_at, reaction=reaction.get("text", ""))
            return

    chat = parse_jid(u.key.remoteJid)
    participant_raw = u.key.participant or u.participant
    participant = parse_jid(participant_raw) if chat.is_group and participant_raw else None
    person = participant or chat
    alt = u.key.participantAlt if participant else u.key.remoteJidAlt
    lid_phone = phone_of(parse_jid(alt)) if person.is_lid and alt else None

    kind, text, media, location = _content(content)
    if kind is None:
        parsed.ignored.append(Ignored(parsed.kind, f"message type {u.messageType or 'unknown'!r} not used"))
        return
    message = WhatsAppMessage(
        provider=Provider.EVOLUTION, provider_message_id=u.key.id, chat_id=str(chat),
        sender=None if u.key.fromMe else (phone_of(person) or lid_phone),
        sender_name=None if u.key.fromMe else u.pushName, is_group=chat.is_group,
        participant=str(participant) if participant else None,
        direction=Direction.OUTBOUND if u.key.fromMe else Direction.INBOUND, kind=kind, text=text, media=media,
        location=location, reply_to=_reply_to(u, content), sent_at=sent_at,
    )
    parsed.events.append(Accepted(f"msg:{u.key.id}", WhatsAppMessageReceived(message=message),
                                  str(person) if lid_phone else None, lid_phone))


_MEDIA_TYPES = ("imageMessage", "videoMessage", "audioMessage", "documentMessage", "stickerMessage")


def _content(content: dict[str, Any]) -> tuple[MessageKind | None, str | None, Media | None, Location | None]:
    text = _text(content)
    if text is not None:
        return MessageKind.TEXT, text, None, None
    for name in _MEDIA_TYPES:
        if name in content:
            m = content[name] or {}
            return MessageKind.MEDIA, None, Media(url=m.get("url"), mimetype=m.get("mimetype"),
                                                  filename=m.get("fileName"), caption=m.get("caption")), None
    if "locationMessage" in content:
        loc = content["locationMessage"] or {}
        if loc.get("degreesLatitude") is not None and loc.get("degreesLongitude") is not None:
            return MessageKind.LOCATION, None, None, Location(
                latitude=loc["degreesLatitude"], longitude=loc["degreesLongitude"], name=loc.get("name"),
                address=loc.get("address"))
    return None, None, None, None


def _text(content: dict[str, Any]) -> str | None:
    if isinstance(content.get("conversation"), str):
        return content["conversation"]
    extended = content.get("extendedTextMessage") or {}
    return extended.get("text") if isinstance(extended.get("text"), str) else None


def _reply_to(u: Upsert, content: dict[str, Any]) -> str | None:
    for holder in (u.contextInfo, (content.get("extendedTextMessage") or {}).get("contextInfo")):
        if holder and holder.get("stanzaId"):
            return holder["stanzaId"]
    return None


def _target(parsed: ParsedWebhook, kind: MessageKind, key: Key, target_id: str, text: str | None,
            at: datetime, *, reaction: str | None = None, action_id: str | None = None) -> None:
    chat = parse_jid(key.remoteJid)
    message = WhatsAppMessage(
        provider=Provider.EVOLUTION, provider_message_id=action_id or key.id, chat_id=str(chat),
        is_group=chat.is_group, direction=Direction.OUTBOUND if key.fromMe else Direction.INBOUND, kind=kind,
        text=text, target_message_id=target_id, reaction=reaction, sent_at=at,
    )
    parsed.events.append(Accepted(f"{kind.value}:{action_id or key.id}", WhatsAppMessageReceived(message=message)))


def _update(parsed: ParsedWebhook, key_id: str, remote: str | None, status: str | int | None, has_message: bool,
            at: datetime) -> None:
    name = BAILEYS_STATUS_NAMES[status] if isinstance(status, int) and 0 <= status < 6 else status
    if name == "DELETED" or (name is None and has_message):
        # Evolution labels any update without a status DELETED, and an edit is such an update
        # (evolution-api#2010): record "changed", never a deletion, and keep the text we have.
        chat = parse_jid(remote) if remote else None
        message = WhatsAppMessage(
            provider=Provider.EVOLUTION, provider_message_id=f"update:{key_id}", chat_id=str(chat or "unknown@c.us"),
            is_group=bool(chat and chat.is_group), kind=MessageKind.EDIT, target_message_id=key_id, sent_at=at,
        )
        parsed.events.append(Accepted(f"edit:{key_id}:changed", WhatsAppMessageReceived(message=message)))
        return
    ack = ACK_BY_NAME.get(str(name)) if name is not None else None
    if ack is None:
        parsed.ignored.append(Ignored(parsed.kind, f"unknown status {status!r}"))
        return
    event = WhatsAppMessageAck(provider=Provider.EVOLUTION, provider_message_id=key_id,
                               chat_id=str(parse_jid(remote)) if remote else None, status=ack, at=at)
    parsed.events.append(Accepted(f"ack:{key_id}::{ack.value}", event))


def _connection(parsed: ParsedWebhook, c: Connection, instance: str, at: datetime, body_digest: str) -> None:
    status = SESSION_BY_NAME.get(c.state)
    if status is None:
        parsed.ignored.append(Ignored(parsed.kind, f"unknown connection state {c.state!r}"))
        return
    if status is SessionStatus.STOPPED and c.statusReason == _LOGGED_OUT:
        status = SessionStatus.FAILED
    event = WhatsAppSessionStatusChanged(provider=Provider.EVOLUTION, session=instance, status=status,
                                         connected=status is SessionStatus.WORKING, at=at)
    parsed.events.append(Accepted(f"session:{instance}:{body_digest}", event))

