"""Phone numbers and WhatsApp chat ids, shared by the gateway (senders) and the notifier (recipients).

Canonical chat ids are WAHA's: `<digits>@c.us` for people, `<id>@g.us` for groups, `<id>@lid` for
WhatsApp's hidden ids. Baileys/Evolution `@s.whatsapp.net` and Meta's bare digits map onto them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberFormat, ValidationResult

USER = "c.us"
GROUP = "g.us"
LID = "lid"

_POSSIBLE_REASONS = {
    ValidationResult.TOO_SHORT: "too short",
    ValidationResult.TOO_LONG: "too long",
    ValidationResult.INVALID_COUNTRY_CODE: "invalid country code",
    ValidationResult.INVALID_LENGTH: "invalid length",
}


class InvalidPhone(ValueError):
    def __init__(self, number: str, reason: str):
        super().__init__(f"{reason}: {number!r}")
        self.number = number
        self.reason = reason


def to_e164(number: str, region: str | None = None) -> str:
    """A number as E.164, read in `region` when it has no country code: `0693955230`, MA → `+212693955230`."""
    try:
        parsed = phonenumbers.parse(number, region)
    except NumberParseException:
        raise InvalidPhone(number, "not a phone number") from None
    possible = phonenumbers.is_possible_number_with_reason(parsed)
    if possible not in (ValidationResult.IS_POSSIBLE, ValidationResult.IS_POSSIBLE_LOCAL_ONLY):
        raise InvalidPhone(number, _POSSIBLE_REASONS.get(possible, "not possible"))
    if not phonenumbers.is_valid_number(parsed):
        raise InvalidPhone(number, "invalid")
    return phonenumbers.format_number(parsed, PhoneNumberFormat.E164)


def to_e164_each(numbers: list[str], region: str | None) -> list[tuple[str | None, str | None]]:
    """`(E.164, None)` or `(None, why not)` for each number: one call for a whole list, so that a
    process pool can take a big one (phonenumbers spends ~60 µs a number)."""
    out: list[tuple[str | None, str | None]] = []
    for number in numbers:
        try:
            out.append((to_e164(number, region), None))
        except InvalidPhone as exc:
            out.append((None, exc.reason))
    return out


@dataclass(frozen=True)
class Jid:
    user: str
    server: str

    def __str__(self) -> str:
        return f"{self.user}@{self.server}"

    @property
    def is_group(self) -> bool:
        return self.server == GROUP

    @property
    def is_lid(self) -> bool:
        return self.server == LID


def parse_jid(value: str) -> Jid:
    """Any provider's form of a chat or sender id, canonical: devices dropped, `s.whatsapp.net` → `c.us`."""
    user, _, server = value.partition("@")
    if not server:
        return Jid(user.lstrip("+"), USER)  # Meta's bare wa_id
    user = user.split(":", 1)[0]  # `5531…:6@s.whatsapp.net` names device 6 of that user
    if server == "s.whatsapp.net":
        server = USER
    return Jid(user, server)


@functools.lru_cache(maxsize=65_536)  # the same few thousand patients write again and again
def phone_of(jid: Jid) -> str | None:
    """The E.164 number behind a person's chat id; None for groups, LIDs and masked or odd ids."""
    if jid.server != USER or not jid.user.isdigit():
        return None
    try:
        parsed = phonenumbers.parse("+" + jid.user, None)
    except NumberParseException:
        return None
    return phonenumbers.format_number(parsed, PhoneNumberFormat.E164)


def chat_of_phone(e164: str) -> str:
    return f"{e164.lstrip('+')}@{USER}"
