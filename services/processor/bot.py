"""What a patient's message asks for, in English, French, Arabic or Hebrew. Pure: text in, intent out.

Matching is on a normalised form: case folded, accents and Arabic diacritics removed, Arabic letter
variants unified, punctuation dropped. A keyword must open the message; a department code may follow.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from enum import StrEnum


class IntentName(StrEnum):
    JOIN_QUEUE = "join_queue"
    POSITION = "position"
    LEAVE = "leave"
    SUBSCRIBE = "subscribe"
    HELP = "help"
    STOP = "stop"
    START = "start"


NEEDS_DEPARTMENT = {IntentName.JOIN_QUEUE, IntentName.SUBSCRIBE}
# Position and leave name one department, or mean all of the patient's: "LEAVE OPD" keeps the LAB ticket.
TAKES_DEPARTMENT = NEEDS_DEPARTMENT | {IntentName.POSITION, IntentName.LEAVE}

# language → intent → phrases, written as people type them; normalised once below.
PHRASES: dict[str, dict[IntentName, tuple[str, ...]]] = {
    "en": {
        IntentName.JOIN_QUEUE: ("join", "queue"),
        IntentName.POSITION: ("position", "my position", "where am i", "status"),
        IntentName.LEAVE: ("leave", "cancel"),
        IntentName.SUBSCRIBE: ("subscribe", "notify me"),
        IntentName.HELP: ("help", "menu", "?"),
        IntentName.STOP: ("stop", "unsubscribe"),
        IntentName.START: ("start", "resume"),
    },
    "fr": {
        IntentName.JOIN_QUEUE: ("rejoindre", "inscrire", "m'inscrire", "file"),
        IntentName.POSITION: ("ma position", "ma place", "où en suis-je", "rang"),
        IntentName.LEAVE: ("quitter", "annuler", "partir"),
        IntentName.SUBSCRIBE: ("s'abonner", "abonner", "abonnement", "prévenez-moi"),
        IntentName.HELP: ("aide", "aidez-moi"),
        IntentName.STOP: ("arrêt", "arrêter", "désabonner", "se désabonner"),
        IntentName.START: ("commencer", "reprendre", "démarrer"),
    },
    "ar": {
        IntentName.JOIN_QUEUE: ("انضمام", "انضم", "سجلني", "تسجيل"),
        IntentName.POSITION: ("دوري", "موقعي", "ترتيبي"),
        IntentName.LEAVE: ("غادر", "مغادرة", "إلغاء", "الغاء"),
        IntentName.SUBSCRIBE: ("اشترك", "اشتراك", "نبهني"),
        IntentName.HELP: ("مساعدة", "ساعدني"),
        IntentName.STOP: ("توقف", "إيقاف", "ايقاف"),
        IntentName.START: ("ابدأ", "بدء", "استئناف"),
    },
    "he": {
        IntentName.JOIN_QUEUE: ("הצטרף", "הצטרפות", "תור"),
        IntentName.POSITION: ("מיקום", "המיקום שלי", "איפה אני"),
        IntentName.LEAVE: ("עזוב", "ביטול", "בטל"),
        IntentName.SUBSCRIBE: ("הירשם", "הרשמה", "עדכן אותי"),
        IntentName.HELP: ("עזרה",),
        IntentName.STOP: ("הפסק", "עצור", "הסר"),
        IntentName.START: ("התחל", "חדש"),
    },
}

_ARABIC_VARIANTS = str.maketrans({"أ": "ا", "إ": "ا", "آ": "ا", "ٱ": "ا", "ى": "ي", "ة": "ه", "ـ": None})
_NOT_WORD = re.compile(r"[^\w?]+")
_APOSTROPHES = re.compile(r"['’`ʼ]")
_DEPARTMENT = re.compile(r"^[a-z0-9][a-z0-9_-]{0,15}$")


def normalise(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch)).translate(_ARABIC_VARIANTS)
    # "?" is a word of its own (alone it asks for help), so "position?" still reads as "position".
    return " ".join(_NOT_WORD.sub(" ", _APOSTROPHES.sub("", stripped).replace("?", " ? ")).split())


# Longest phrases first, so "ma position" wins over "position".
_TABLE = sorted(
    ((normalise(p), intent, language) for language, intents in PHRASES.items() for intent, phrases in intents.items()
     for p in phrases),
    key=lambda row: -len(row[0]),
)


@dataclass(frozen=True)
class Recognised:
    intent: IntentName | None
    language: str | None
    arguments: dict[str, str] = field(default_factory=dict)


def recognise(text: str | None) -> Recognised:
    if not text:
        return Recognised(None, None)
    words = normalise(text)
    for phrase, intent, language in _TABLE:
        if words == phrase or words.startswith(phrase + " "):
            rest = words[len(phrase):].split()
            arguments = {}
            if intent in TAKES_DEPARTMENT and rest and _DEPARTMENT.match(rest[0]):
                arguments["department"] = rest[0].upper()
            return Recognised(intent, language, arguments)
    return Recognised(None, language_of(text))


def language_of(text: str) -> str | None:
    """The script tells Arabic and Hebrew apart; Latin text is not guessed at."""
    for ch in text:
        if "\u0590" <= ch <= "\u05ff":
            return "he"
        if "\u0600" <= ch <= "\u06ff":
            return "ar"
    return None


HELP = {
    "en": "Send JOIN <department> to take a place in line (e.g. JOIN OPD), POSITION to see yours, LEAVE to "
          "give it up, SUBSCRIBE <department> to hear when it opens, STOP to receive no more messages.",
    "fr": "Envoyez REJOINDRE <service> pour prendre une place (ex. REJOINDRE OPD), MA POSITION pour la "
          "connaître, QUITTER pour la libérer, S'ABONNER <service> pour être prévenu de l'ouverture, "
          "ARRÊT pour ne plus recevoir de messages.",
    "ar": "أرسل انضم <القسم> لأخذ دور (مثال: انضم OPD)، دوري لمعرفة ترتيبك، غادر للتخلي عن دورك، "
          "اشترك <القسم> لتنبيهك عند فتحه، توقف لإيقاف الرسائل.",
    "he": "שלחו הצטרף <מחלקה> כדי לקבל מקום בתור (למשל הצטרף OPD), מיקום כדי לדעת איפה אתם, עזוב כדי "
          "לוותר על התור, הירשם <מחלקה> כדי לקבל הודעה כשהיא נפתחת, הפסק כדי לא לקבל עוד הודעות.",
}

WHICH_DEPARTMENT = {
    "en": "Which department? For example: JOIN OPD",
    "fr": "Quel service ? Par exemple : REJOINDRE OPD",
    "ar": "أي قسم؟ مثال: انضم OPD",
    "he": "לאיזו מחלקה? למשל: הצטרף OPD",
}


def reply_for(recognised: Recognised) -> str | None:
    """The bot's own answer, where it has one; everything else is answered by the service that acts."""
    language = recognised.language or "en"
    if recognised.intent is IntentName.HELP:
        return HELP[language]
    if recognised.intent in NEEDS_DEPARTMENT and "department" not in recognised.arguments:
        return WHICH_DEPARTMENT[language]
    return None
