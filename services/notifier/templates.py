"""The texts patients receive, per event and language; a tenant may override any of them.

Placeholders: {name}, {department}, {ticket}, {position}, {wait}, {counter}, {reason}, {message}.
A text whose placeholder has no value renders it empty rather than failing the notification.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping

LANGUAGES = ("fr", "en", "ar", "he")

BUILT_IN: dict[str, dict[str, str]] = {
    "ticket_issued": {
        "fr": "Bonjour {name}, votre ticket {ticket} pour {department} est enregistré. Position : {position}. "
              "Attente estimée : {wait}.",
        "en": "Hello {name}, your ticket {ticket} for {department} is confirmed. Position: {position}. "
              "Estimated wait: {wait}.",
        "ar": "مرحبا {name}، تم تسجيل تذكرتك {ticket} في {department}. ترتيبك: {position}. الانتظار المتوقع: {wait}.",
        "he": "שלום {name}, הכרטיס שלך {ticket} ל{department} נרשם. מקומך בתור: {position}. זמן המתנה משוער: {wait}.",
    },
    "ticket_refused_queue_closed": {
        "fr": "Désolé, la file {department} est fermée pour le moment. {message}",
        "en": "Sorry, the {department} queue is closed right now. {message}",
        "ar": "عذرا، طابور {department} مغلق حاليا. {message}",
        "he": "מצטערים, התור ל{department} סגור כעת. {message}",
    },
    "ticket_refused_unknown_department": {
        "fr": "Service {department} inconnu. Services disponibles : {departments}.",
        "en": "Unknown department {department}. Available: {departments}.",
        "ar": "القسم {department} غير معروف. الأقسام المتاحة: {departments}.",
        "he": "המחלקה {department} אינה מוכרת. מחלקות זמינות: {departments}.",
    },
    "ticket_refused_already_in_queue": {
        "fr": "Vous avez déjà le ticket {ticket} pour {department}. Position : {position}.",
        "en": "You already hold ticket {ticket} for {department}. Position: {position}.",
        "ar": "لديك بالفعل التذكرة {ticket} في {department}. ترتيبك: {position}.",
        "he": "כבר יש לך כרטיס {ticket} ל{department}. מקומך בתור: {position}.",
    },
    "turn_approaching": {
        "fr": "{name}, votre tour approche pour {department} (ticket {ticket}, position {position}). "
              "Merci de vous rapprocher.",
        "en": "{name}, your turn is coming up at {department} (ticket {ticket}, position {position}). "
              "Please come closer.",
        "ar": "{name}، اقترب دورك في {department} (التذكرة {ticket}، الترتيب {position}). يرجى الاقتراب.",
        "he": "{name}, התור שלך ב{department} מתקרב (כרטיס {ticket}, מקום {position}). נא להתקרב.",
    },
    "turn_reached": {
        "fr": "{name}, c'est votre tour ! Ticket {ticket}, {department}{counter}.",
        "en": "{name}, it's your turn! Ticket {ticket}, {department}{counter}.",
        "ar": "{name}، حان دورك! التذكرة {ticket}، {department}{counter}.",
        "he": "{name}, הגיע תורך! כרטיס {ticket}, {department}{counter}.",
    },
    "position": {
        "fr": "Ticket {ticket} pour {department} : position {position}, attente estimée {wait}.",
        "en": "Ticket {ticket} for {department}: position {position}, estimated wait {wait}.",
        "ar": "التذكرة {ticket} في {department}: الترتيب {position}، الانتظار المتوقع {wait}.",
        "he": "כרטיס {ticket} ל{department}: מקום {position}, זמן המתנה משוער {wait}.",
    },
    "no_ticket": {
        "fr": "Vous n'êtes dans aucune file d'attente.",
        "en": "You are not in any queue.",
        "ar": "أنت لست في أي طابور.",
        "he": "אינך נמצא/ת באף תור.",
    },
    "subscribed": {
        "fr": "C'est noté : nous vous préviendrons à l'ouverture de {department}.",
        "en": "Noted: we will tell you when {department} opens.",
        "ar": "تم التسجيل: سنخبرك عند فتح {department}.",
        "he": "נרשם: נודיע לך כש{department} תיפתח.",
    },
    "already_open": {
        "fr": "{department} est ouvert : envoyez REJOINDRE {code} pour prendre un ticket.",
        "en": "{department} is open: send JOIN {code} to take a ticket.",
        "ar": "{department} مفتوح: أرسل انضمام {code} للحصول على تذكرة.",
        "he": "{department} פתוחה: שלחו הצטרף {code} כדי לקבל כרטיס.",
    },
    "ticket_left": {
        "fr": "Vous avez quitté la file {department} (ticket {ticket}).",
        "en": "You have left the {department} queue (ticket {ticket}).",
        "ar": "لقد غادرت طابور {department} (التذكرة {ticket}).",
        "he": "יצאת מהתור ל{department} (כרטיס {ticket}).",
    },
    "ticket_cancelled_queue_closed": {
        "fr": "La file {department} est fermée : votre ticket {ticket} est annulé.",
        "en": "The {department} queue has closed: your ticket {ticket} is cancelled.",
        "ar": "تم إغلاق طابور {department}: تذكرتك {ticket} ملغاة.",
        "he": "התור ל{department} נסגר: הכרטיס שלך {ticket} בוטל.",
    },
    "queue_opened": {
        "fr": "{department} est ouvert. Envoyez REJOINDRE {code} pour prendre un ticket. {message}",
        "en": "{department} is now open. Send JOIN {code} to take a ticket. {message}",
        "ar": "{department} مفتوح الآن. أرسل انضمام {code} للحصول على تذكرة. {message}",
        "he": "{department} פתוחה עכשיו. שלחו הצטרף {code} כדי לקבל כרטיס. {message}",
    },
}

_COUNTER = {"fr": ", guichet {}", "en": ", counter {}", "ar": "، الشباك {}", "he": ", עמדה {}"}
_MINUTES = {"fr": "{} min", "en": "{} min", "ar": "{} دقيقة", "he": "{} דק'"}


class _Blank(dict):
    def __missing__(self, key: str) -> str:
        return ""


def language_of(wanted: str | None, tenant_locale: str) -> str:
    for candidate in (wanted, tenant_locale):
        if candidate and candidate[:2].lower() in LANGUAGES:
            return candidate[:2].lower()
    return "en"


def render(kind: str, language: str, values: Mapping[str, object], overrides: Mapping[str, Mapping[str, str]]) -> str:
    """The text for `kind` in `language` (the tenant's own wording first), filled and tidied."""
    text = (overrides.get(kind) or {}).get(language) or BUILT_IN[kind].get(language) or BUILT_IN[kind]["en"]
    filled = dict(values)
    if filled.get("counter"):
        filled["counter"] = _COUNTER[language].format(filled["counter"])
    if isinstance(filled.get("wait_s"), int | float):
        filled["wait"] = _MINUTES[language].format(max(1, round(float(filled["wait_s"]) / 60)))
    rendered = string.Formatter().vformat(text, (), _Blank({k: v for k, v in filled.items() if v is not None}))
    # A missing name leaves ", it's your turn": drop what leads the text in.
    return re.sub(r"\s+([,،])", r"\1", " ".join(rendered.split())).lstrip(",،: ")
