"""Meta WhatsApp Cloud API webhooks (PROVIDERS.md §4): entries of changes, each with messages or statuses."""

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
    WhatsAppMessage,
    WhatsAppMessageAck,
    WhatsAppMessageReceived,
)
from shared.phones import parse_jid, phone_of

from ..domain import ACK_BY_NAME, LOOSE, Accepted, Ignored, ParsedWebhook, Tenant, from_unix, validated


class Contact(BaseModel):
    model_config = LOOSE
    wa_id: str | None = None
    profile: dict[str, Any] | None = None


class Message(BaseModel):
    model_config = LOOSE
    sender: str = Field(alias="from", min_length=1)
    id: str = Field(min_length=1)
    timestamp: str | int
    type: str = Field(min_length=1)
    text: dict[str, Any] | None = None
    context: dict[str, Any] | None = None
    reaction: dict[str, Any] | None = None
    location: dict[str, Any] | None = None


class Status(BaseModel):
    model_config = LOOSE
    id: str = Field(min_length=1)
    status: str = Field(min_length=1)
    timestamp: str | int
    recipient_id: str | None = None


class Metadata(BaseModel):
    model_config = LOOSE
    phone_number_id: str = Field(min_length=1)


class Value(BaseModel):
    model_config = LOOSE
    metadata: dict[str, Any] | None = None
    contacts: list[Contact] = []
    messages: list[Message] = []
    statuses: list[Status] = []
    errors: list[dict[str, Any]] = []


class Change(BaseModel):
    model_config = LOOSE
    field: str
    value: Value


class Entry(BaseModel):
    model_config = LOOSE
    id: str
    changes: list[Change]


class Notification(BaseModel):
    model_config = LOOSE
    object: str = Field(min_length=1)
    entry: list[Entry]


_MEDIA = ("image", "video", "audio", "document", "sticker")


def parse(body: Any, tenant: Tenant, received_at: datetime) -> ParsedWebhook:
    notification = validated(Notification, body)
    parsed = ParsedWebhook(kind=notification.object)
    # One POST can carry several entries, changes, messages and statuses: every one of the tenant's is kept.
    for i, entry in enumerate(notification.entry):
        for j, change in enumerate(entry.changes):
            if change.field != "messages":
                parsed.ignored.append(Ignored(change.field, "field not used"))
                continue
            number = validated(Metadata, change.value.metadata or {}, f"entry.{i}.changes.{j}.value.metadata")
            # Meta posts every number of an app to the app's one callback, and retries anything but a 200
            # for days: another number's change is skipped, never kept as this tenant's, never refused.
            if number.phone_number_id != tenant.session:
                parsed.ignored.append(Ignored(change.field,
                                              f"phone_number_id {number.phone_number_id!r} is not this tenant's"))
                continue
            names = {c.wa_id: (c.profile or {}).get("name") for c in change.value.contacts}
            for m in change.value.messages:
                _message(parsed, m, names.get(m.sender), received_at)
            for s in change.value.statuses:
                _status(parsed, s, received_at)
            for error in change.value.errors:
                parsed.ignored.append(Ignored("errors", f"{error.get('code')} {error.get('title', '')}".strip()))
    return parsed


def _message(parsed: ParsedWebhook, m: Message, name: str | None, received_at: datetime) -> None:
    chat = parse_jid(m.sender)
    kind, text, media, location, target, reaction = MessageKind.TEXT, None, None, None, None, None
    if m.type == "text":
        text = (m.text or {}).get("body")
    elif m.type in _MEDIA:
        kind = MessageKind.MEDIA
        part = getattr(m, m.type, None) or (m.model_extra or {}).get(m.type) or {}
        media = Media(mimetype=part.get("mime_type"), filename=part.get("filename"), caption=part.get("caption"),
                      url=None)
    elif m.type == "location" and m.location:
        kind = MessageKind.LOCATION
        location = Location(latitude=m.location["latitude"], longitude=m.location["longitude"],
                            name=m.location.get("name"), address=m.location.get("address"))
    elif m.type == "reaction" and m.reaction:
        kind, target, reaction = MessageKind.REACTION, m.reaction.get("message_id"), m.reaction.get("emoji", "")
    else:
        kind = MessageKind.OTHER
    message = WhatsAppMessage(
        provider=Provider.META, provider_message_id=m.id, chat_id=str(chat), sender=phone_of(chat),
        sender_name=name, direction=Direction.INBOUND, kind=kind, text=text, media=media, location=location,
        reply_to=(m.context or {}).get("id"), target_message_id=target, reaction=reaction,
        sent_at=from_unix(m.timestamp) or received_at,
    )
    parsed.events.append(Accepted(f"msg:{m.id}", WhatsAppMessageReceived(message=message)))


def _status(parsed: ParsedWebhook, s: Status, received_at: datetime) -> None:
    status = ACK_BY_NAME.get(s.status)
    if status is None:
        parsed.ignored.append(Ignored("statuses", f"unknown status {s.status!r}"))
        return
    event = WhatsAppMessageAck(
        provider=Provider.META, provider_message_id=s.id,
        chat_id=str(parse_jid(s.recipient_id)) if s.recipient_id else None, status=status,
        at=from_unix(s.timestamp) or received_at,
    )
    parsed.events.append(Accepted(f"ack:{s.id}::{status.value}", event))
