import pytest

from services.notifier.templates import BUILT_IN, LANGUAGES, language_of, render


@pytest.mark.parametrize("kind", sorted(BUILT_IN))
def test_every_text_exists_in_every_language(kind):
    assert set(BUILT_IN[kind]) == set(LANGUAGES)


def test_texts_are_filled_in_the_patients_language():
    values = {"name": "Amina", "department": "Consultations", "ticket": "OPD-012", "counter": "2"}
    assert render("turn_reached", "fr", values, {}) == "Amina, c'est votre tour ! Ticket OPD-012, Consultations, guichet 2."
    assert render("turn_reached", "en", values, {}) == "Amina, it's your turn! Ticket OPD-012, Consultations, counter 2."
    assert "OPD-012" in render("turn_reached", "ar", values, {}) and "OPD-012" in render("turn_reached", "he", values, {})


def test_missing_values_leave_no_trace_and_waits_read_in_minutes():
    text = render("ticket_issued", "en", {"department": "OPD", "ticket": "OPD-001", "position": 3, "wait_s": 900}, {})
    assert text == "Hello, your ticket OPD-001 for OPD is confirmed. Position: 3. Estimated wait: 15 min."
    assert "{" not in render("turn_reached", "fr", {"ticket": "OPD-1"}, {})
    assert render("turn_reached", "fr", {"ticket": "OPD-1"}, {}).startswith("c'est votre tour")


def test_a_tenant_overrides_a_text():
    overrides = {"turn_reached": {"fr": "Ticket {ticket} : présentez-vous au guichet{counter}"}}
    assert render("turn_reached", "fr", {"ticket": "A-1", "counter": "3"}, overrides) == \
        "Ticket A-1 : présentez-vous au guichet, guichet 3"
    assert render("turn_reached", "en", {"ticket": "A-1"}, overrides).startswith("it's your turn")


def test_language_falls_back_to_the_tenant_then_english():
    assert language_of("he", "fr") == "he"
    assert language_of(None, "ar") == "ar"
    assert language_of("de", "xx") == "en"
