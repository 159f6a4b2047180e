"""The processor's handlers: keep every message once, understand it, say what it was."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime, timedelta

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
from .repository import Action, Incoming, ProcessorUnitOfWork, action_of

_ACTIONS = {MessageKind.EDIT, MessageKind.REVOKE, MessageKind.REACTION}


async def process_messages(envelopes: list[Envelope[WhatsAppMessageReceived]], uow: ProcessorUnitOfWork, *,
                           clock: Callable[[], datetime]) -> list[list[Event]]:
    """Store the messages in their conversations, recognise what patients ask, and publish the results.

    One statement stores the whole group; everything after it happens in arrival order, with the
    same outcome as storing and handling each message alone.
    """
    started = time.perf_counter()
    at = clock()
    # An instant of its own for each message: processed_at keeps the group's order.
    understood = [_understand(e, at + timedelta(microseconds=i)) for i, e in enumerate(envelopes)]
    stored = await uow.messages.store([incoming for incoming, _, _ in understood])

    # An edit, revoke or reaction that came before its message in this group waits for that message,
    # as it would have if it had been stored first, on its own.
    position = {(s.conversation_id, incoming.message.provider_message_id): i
                for i, ((incoming, _, _), s) in enumerate(zip(understood, stored, strict=True))
                if s.is_new and incoming.message.kind not in _ACTIONS}
    waiting: defaultdict[int, list[Action]] = defaultdict(list)
    effects: list[list[Event]] = []
    for i, ((incoming, recognised, intent), s) in enumerate(zip(understood, stored, strict=True)):
        if not s.is_new:
            effects.append([])  # the provider sent this message again under the same id
            continue
        m = incoming.message
        if m.kind in _ACTIONS and m.target_message_id:
            target = position.get((s.conversation_id, m.target_message_id), -1)
            if target > i:
                waiting[target].append(action_of(m))
            else:
                await uow.messages.apply(s.conversation_id, m.target_message_id, action_of(m))
        # Stable: what was stored before this group stays ahead of this group's actions at the same instant.
        for earlier in sorted(s.earlier + waiting.pop(i, []), key=lambda a: a.at):
            await uow.messages.apply(s.conversation_id, m.provider_message_id, earlier)
        if recognised.language:
            await uow.conversations.set_language(s.conversation_id, recognised.language)
        if recognised.intent in (bot.IntentName.STOP, bot.IntentName.START):
            await uow.conversations.set_opted_out(s.conversation_id, recognised.intent is bot.IntentName.STOP)
        effects.append([MessageProcessed(
            message=m, conversation_id=str(s.conversation_id), intent=intent,
            language=recognised.language, reply_text=bot.reply_for(recognised),
            processing_ms=(time.perf_counter() - started) * 1000,
        )])
    return effects


def _understand(envelope: Envelope[WhatsAppMessageReceived], processed_at: datetime
                ) -> tuple[Incoming, bot.Recognised, Intent | None]:
    m = envelope.data.message
    chat = parse_jid(m.chat_id)
    inbound_sender = m.sender if m.direction is Direction.INBOUND else None
    phone = None if chat.is_group else (phone_of(chat) or inbound_sender)
    # Only a patient's own text is read for intents: never our echoes, reactions or edits.
    recognised = bot.Recognised(None, None)
    if m.direction is Direction.INBOUND and m.kind is MessageKind.TEXT:
        recognised = bot.recognise(m.text)
    intent = Intent(name=recognised.intent.value, arguments=recognised.arguments) if recognised.intent else None
    return Incoming(envelope.tenant_id, m, phone, intent.model_dump() if intent else None, recognised.language,
                    processed_at), recognised, intent
