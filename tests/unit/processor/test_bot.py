import pytest

from services.processor.bot import IntentName, recognise, reply_for


@pytest.mark.parametrize("text, intent, language, department", [
    ("JOIN OPD", IntentName.JOIN_QUEUE, "en", "OPD"),
    ("join opd", IntentName.JOIN_QUEUE, "en", "OPD"),
    ("REJOINDRE OPD", IntentName.JOIN_QUEUE, "fr", "OPD"),
    ("انضم OPD", IntentName.JOIN_QUEUE, "ar", "OPD"),
    ("إنضم opd", IntentName.JOIN_QUEUE, "ar", "OPD"),
    ("הצטרף OPD", IntentName.JOIN_QUEUE, "he", "OPD"),
    ("Ma position", IntentName.POSITION, "fr", None),
    ("Où en suis-je ?", IntentName.POSITION, "fr", None),
    ("position", IntentName.POSITION, "en", None),
    ("دوري", IntentName.POSITION, "ar", None),
    ("מיקום", IntentName.POSITION, "he", None),
    ("QUITTER", IntentName.LEAVE, "fr", None),
    ("Leave", IntentName.LEAVE, "en", None),
    ("LEAVE OPD", IntentName.LEAVE, "en", "OPD"),
    ("quitter lab", IntentName.LEAVE, "fr", "LAB"),
    ("POSITION OPD", IntentName.POSITION, "en", "OPD"),
    ("Où en suis-je?", IntentName.POSITION, "fr", None),
    ("Where am I?", IntentName.POSITION, "en", None),
    ("position?", IntentName.POSITION, "en", None),
    ("aide?", IntentName.HELP, "fr", None),
    ("?", IntentName.HELP, "en", None),
    ("מיקום?", IntentName.POSITION, "he", None),
    ("دوري؟", IntentName.POSITION, "ar", None),
    ("S’ABONNER OPD", IntentName.SUBSCRIBE, "fr", "OPD"),
    ("subscribe cardio", IntentName.SUBSCRIBE, "en", "CARDIO"),
    ("اشترك OPD", IntentName.SUBSCRIBE, "ar", "OPD"),
    ("aide", IntentName.HELP, "fr", None),
    ("עזרה", IntentName.HELP, "he", None),
    ("STOP", IntentName.STOP, "en", None),
    ("Arrêt", IntentName.STOP, "fr", None),
    ("ARRET", IntentName.STOP, "fr", None),
    ("توقف", IntentName.STOP, "ar", None),
    ("start", IntentName.START, "en", None),
    ("Reprendre", IntentName.START, "fr", None),
])
def test_intents_in_four_languages_ignore_case_and_accents(text, intent, language, department):
    recognised = recognise(text)
    assert (recognised.intent, recognised.language) == (intent, language)
    assert recognised.arguments.get("department") == department


@pytest.mark.parametrize("text", ["hello, is the doctor in today?", "Bonjour", "", None, "joined the group"])
def test_anything_else_is_a_plain_message(text):
    assert recognise(text).intent is None


def test_script_tells_arabic_and_hebrew_apart_for_plain_messages():
    assert recognise("مرحبا").language == "ar" and recognise("שלום").language == "he"


def test_help_and_a_missing_department_have_replies_in_the_language():
    assert "JOIN <department>" in reply_for(recognise("help"))
    assert "REJOINDRE <service>" in reply_for(recognise("aide"))
    assert reply_for(recognise("REJOINDRE")) == "Quel service ? Par exemple : REJOINDRE OPD"
    assert reply_for(recognise("JOIN OPD")) is None
    assert reply_for(recognise("LEAVE")) is None and reply_for(recognise("position?")) is None
