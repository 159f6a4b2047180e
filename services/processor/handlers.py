"""The processor's handlers: keep every message once, understand it, say what it was."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime

from shared.events.catalog import (
    Direction,
    Intent,
    MessageKind,
    MessageProcessed,
    WhatsAppMessageReceived,
)
from shared.events.envelope import Envelope, Event
from shared.phones import parse_jid, phone_of

from . import bot
from .repository import ProcessorUnitOfWork, action_of

_ACTIONS = {MessageKind.EDIT, MessageKind.REVOKE, MessageKind.REACTION}


async def process_message(envelope: Envelope[WhatsAppMessageReceived], uow: ProcessorUnitOfWork, *,
                          clock: Callable[[], datetime]) -> list[Event]:
    """Store the message in its conversation, recognise what a patient asks, and publish the result."""
    started = time.perf_counter()
    m = envelope.data.message
    tenant = envelope.tenant_id
    chat = parse_jid(m.chat_id)
    inbound_sender = m.sender if m.direction is Direction.INBOUND else None
    phone = None if chat.is_group else (phone_of(chat) or inbound_sender)

    # Only a patient's own text is read for intents: never our echoes, reactions or edits.
    recognised = bot.Recognised(None, None)
    if m.direction is Direction.INBOUND and m.kind is MessageKind.TEXT:
        recognised = bot.recognise(m.text)
    intent = Intent(name=recognised.intent.value, arguments=recognised.arguments) if recognised.intent else None

    stored = await uow.messages.store(tenant, m, phone=phone, intent=intent.model_dump() if intent else None,
                                      language=recognised.language, processed_at=clock())
    if not stored.is_new:
        return []  # the provider sent this message again under the same id
    conversation_id = stored.conversation_id

    if m.kind in _ACTIONS and m.target_message_id:
        await uow.messages.apply(conversation_id, m.target_message_id, action_of(m))
    for earlier in stored.earlier:
        await uow.messages.apply(conversation_id, m.provider_message_id, earlier)
    if recognised.language:
        await uow.conversations.set_language(conversation_id, recognised.language)
    if recognised.intent in (bot.IntentName.STOP, bot.IntentName.START):
        await uow.conversations.set_opted_out(conversation_id, recognised.intent is bot.IntentName.STOP)

    return [MessageProcessed(
        message=m, conversation_id=str(conversation_id), intent=intent, language=recognised.language,
        reply_text=bot.reply_for(recognised), processing_ms=(time.perf_counter() - started) * 1000,
    )]
