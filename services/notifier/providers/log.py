"""The default provider (`WABUS_PROVIDER=log`): every message is recorded and logged as sent, and nothing leaves."""

from __future__ import annotations

import logging
import uuid
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime

from shared.events.catalog import Provider, SessionStatus
from shared.events.logs import mask_phone
from shared.phones import chat_of_phone

from . import Sent, SessionState, recipient_digits

log = logging.getLogger(__name__)

# Enough to reconcile recent sends and look at in a debugger, never a growing heap in a long run.
KEPT_MESSAGES = 1000


@dataclass(frozen=True)
class LoggedMessage:
    provider_message_id: str
    session: str
    phone_e164: str
    text: str
    at: datetime


class LogProvider:
    provider = Provider.LOG
    # What it logged can be looked up.
    can_look_up = True

    def __init__(self, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC), keep: int = KEPT_MESSAGES):
        self._clock = clock
        self.sent: deque[LoggedMessage] = deque(maxlen=keep)

    async def send_text(self, session: str, phone_e164: str, text: str) -> Sent:
        chat = chat_of_phone(recipient_digits(phone_e164))
        message = LoggedMessage(f"log-{uuid.uuid4()}", session, phone_e164, text, self._clock())
        self.sent.append(message)
        log.info("message logged, not sent", extra={"provider_message_id": message.provider_message_id,
                                                    "session": session, "to": mask_phone(phone_e164), "text": text})
        return Sent(provider_message_id=message.provider_message_id, chat_id=chat)

    async def session_state(self, session: str) -> SessionState:
        return SessionState(status=SessionStatus.WORKING, connected=True, can_send=True, provider_status="log")

    async def find_sent(self, session: str, phone_e164: str, text: str, since: datetime, *,
                        taken: Collection[str] = ()) -> str | None:
        for message in self.sent:
            if (message.session, message.phone_e164, message.text) == (session, phone_e164, text) and \
                    message.at >= since and message.provider_message_id not in taken:
                return message.provider_message_id
        return None
