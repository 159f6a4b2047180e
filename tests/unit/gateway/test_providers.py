"""Every real sample parses into the event a subscriber should see."""

import json
from datetime import UTC, datetime

import pytest

from services.gateway.domain import BadShape, ForeignSession, Tenant
from services.gateway.providers import PARSERS
from shared.events.catalog import AckStatus, Direction, MessageKind, Provider, SessionStatus
from tests.samples import as_posted, session_of, webhook_samples

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
PHONE_NUMBER_ID = "106540352242922"


def tenant_of(provider: Provider, session: str | None = None) -> Tenant:
    session = session or (PHONE_NUMBER_ID if provider is Provider.META else "default")
    return Tenant("clinic-a", provider, session, None, None, "MA", "fr")


def parse(name: str):
    provider, body = as_posted(name)
    return PARSERS[Provider(provider)](json.loads(body), tenant_of(Provider(provider), session_of(name)), NOW)


@pytest.mark.parametrize("name", webhook_samples())
def test_every_sample_parses(name):
    parsed = parse(name)
    assert parsed.events or parsed.ignored


def messages(name):
    return [a.event.message for a in parse(name).events]


def test_waha_text_from_webjs():
    (m,) = messages("waha/message.text.webjs.json")
    assert (m.provider_message_id, m.chat_id, m.text, m.kind) == (
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "11111111111@c.us", "Hi there!", MessageKind.TEXT)
    assert m.direction is Direction.OUTBOUND  # fromMe: our own message coming back
    assert m.sent_at == datetime.fromtimestamp(1667561485, UTC)


def test_waha_media_keeps_caption_url_and_mimetype():
    (m,) = messages("waha/message.media.json")
    assert m.kind is MessageKind.MEDIA and m.text is None
    assert m.media.caption == "Check this out (caption for the media)!"
    assert m.media.mimetype == "image/jpeg" and m.media.url.endswith(".jpg")


def test_waha_reply_points_at_the_bare_id():
    (m,) = messages("waha/message.reply.json")
    assert m.reply_to == "AAAAAAAAAAAAAAAAAAA"


def test_waha_lid_sender_with_a_bare_reply_id():
    (m,) = messages("waha/message.any.lid-reply.partial.json")
    assert m.chat_id == "72318944542853@lid" and m.direction is Direction.INBOUND
    assert m.reply_to == "AC77C28A96045A41DA52D5DAF48AABE0" and m.text == "Olaaa"


def test_waha_reaction_edit_and_revoke_point_at_their_message():
    (reaction,) = messages("waha/message.reaction.json")
    assert (reaction.kind, reaction.reaction, reaction.target_message_id) == (
        MessageKind.REACTION, "🙏", "11111111111111111111111111111111")
    (edit,) = messages("waha/message.edited.partial.json")
    assert (edit.kind, edit.text, edit.target_message_id) == (MessageKind.EDIT, "New body", "AAAAAAAAAAAAAAAA")
    (revoke,) = messages("waha/message.revoked.partial.json")
    assert (revoke.kind, revoke.target_message_id) == (MessageKind.REVOKE, "AAAAAAAAAAAAAAAA")


def test_waha_acks_are_mapped_by_name_and_group_acks_per_participant():
    (single,) = parse("waha/message.ack.json").events
    (group,) = parse("waha/message.ack.group.json").events
    assert single.event.status is AckStatus.READ and group.event.status is AckStatus.READ
    assert single.dedupe_key != group.dedupe_key  # one ack per participant in a group
    assert group.event.chat_id == "11111111111@g.us"


def test_waha_session_status():
    (status,) = parse("waha/session.status.json").events
    assert status.event.status is SessionStatus.WORKING and status.event.connected
    assert status.event.at == datetime.fromtimestamp(1700000003, UTC)


def test_waha_call_stub_and_empty_payloads_are_ignored():
    assert [i.reason for i in parse("waha/message.noweb.call-stub.json").ignored] == ["call notification"]
    assert [i.reason for i in parse("waha/envelope.structure.json").ignored] == ["empty payload"]


def test_evolution_upsert_echo_is_outbound_text():
    (m,) = messages("evolution/messages.upsert.json")
    assert m.direction is Direction.OUTBOUND and m.text.startswith("Clínica")
    assert m.provider_message_id == "4DA1D8D1B5B0139AC8C44B44B8CF5A93"
    assert m.chat_id == "55119********@c.us" and m.sender is None  # masked by the reporter: no phone


def test_evolution_deleted_status_is_an_edit_never_a_deletion():
    (m,) = messages("evolution/messages.update.json")
    assert m.kind is MessageKind.EDIT and m.target_message_id == "A5561E44C2A63682E4295B52F484C14E"
    assert m.text is None


def test_evolution_connection_replaced_is_a_stopped_session():
    (status,) = parse("evolution/connection.update.close.json").events
    assert status.event.status is SessionStatus.STOPPED and not status.event.connected
    assert status.event.session == "tiago-dev"


def test_baileys_numeric_status_is_named_not_compared():
    (ack,) = parse("baileys/messages.update.status.json").events
    assert ack.event.status is AckStatus.SERVER  # Baileys 2 = SERVER_ACK; WAHA's 2 would be DEVICE


def test_baileys_revoke_arrives_as_a_protocol_message():
    (m,) = messages("baileys/messages.upsert.revoke.partial.json")
    assert (m.kind, m.target_message_id, m.chat_id, m.is_group) == (
        MessageKind.REVOKE, "3A094AD1F16E847023AE", "120363151623077576@g.us", True)


def test_meta_text_status_and_errors():
    (m,) = messages("meta/messages.text.json")
    assert (m.sender, m.sender_name, m.chat_id, m.text) == (
        "+16315551181", "test user name", "16315551181@c.us", "this is a text message")
    (sent,) = parse("meta/statuses.sent.json").events
    (delivered,) = parse("meta/statuses.delivered.json").events
    assert (sent.event.status, delivered.event.status) == (AckStatus.SERVER, AckStatus.DELIVERED)
    assert sent.event.provider_message_id == delivered.event.provider_message_id
    assert [i.reason for i in parse("meta/errors.rate-limit.json").ignored] == ["130429 Rate limit hit"]


@pytest.mark.parametrize("provider, body, field", [
    (Provider.WAHA, {"session": "default"}, "event"),
    (Provider.WAHA, {"event": "message", "session": "default", "payload": {"from": "1@c.us"}}, "payload.id"),
    (Provider.WAHA, {"event": "message", "payload": {}}, "session"),
    (Provider.EVOLUTION, {"event": "messages.upsert", "instance": "default", "data": {"key": {"id": "A"}}},
     "data.key.remoteJid"),
    (Provider.EVOLUTION, {"event": "messages.upsert", "instance": "", "data": {}}, "instance"),
    (Provider.META, {"object": "whatsapp_business_account", "entry": [{"id": "1"}]}, "entry.0.changes"),
    # Meta names the number in every `messages` change: without it, whose the change is cannot be told.
    (Provider.META, {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [
        {"field": "messages", "value": {"messages": []}}]}]}, "entry.0.changes.0.value.metadata.phone_number_id"),
])
def test_wrong_shape_names_the_field(provider, body, field):
    with pytest.raises(BadShape) as info:
        PARSERS[provider](body, tenant_of(provider), NOW)
    assert info.value.field == field


def _meta_message(**fields):
    message = {"from": "212693955230", "id": "wamid.1", "timestamp": "1", "type": "text", "text": {"body": "hi"},
               **fields}
    value = {"metadata": {"phone_number_id": PHONE_NUMBER_ID}, "messages": [message]}
    return {"object": "whatsapp_business_account",
            "entry": [{"id": "x", "changes": [{"field": "messages", "value": value}]}]}


_EVOLUTION_KEY = {"remoteJid": "212693955230@s.whatsapp.net", "id": "A"}


@pytest.mark.parametrize("provider, payload", [
    (Provider.META, _meta_message(timestamp="soon")),
    (Provider.META, _meta_message(type="location", location={"name": "x"})),
    (Provider.META, _meta_message(type="image", image="abc")),
    (Provider.WAHA, {"event": "message", "session": "default", "timestamp": 10**20,
                     "payload": {"id": "x", "from": "212693955230@c.us"}}),
    (Provider.WAHA, {"event": "message", "session": "default",
                     "payload": {"id": "x", "from": "72318944542853@lid", "_data": {"key": "k"}}}),
    (Provider.EVOLUTION, {"event": "messages.upsert", "instance": "default",
                          "data": {"key": _EVOLUTION_KEY, "message": {"protocolMessage": "x"}}}),
    (Provider.EVOLUTION, {"event": "messages.upsert", "instance": "default",
                          "data": {"key": _EVOLUTION_KEY, "message": {"reactionMessage": None}}}),
    (Provider.EVOLUTION, {"event": "messages.upsert", "instance": "default",
                          "data": {"key": _EVOLUTION_KEY, "messageTimestamp": "x"}}),
], ids=["meta-timestamp", "meta-location", "meta-image", "waha-timestamp", "waha-lid-key", "evolution-protocol",
        "evolution-reaction", "evolution-timestamp"])
def test_a_value_of_the_wrong_type_or_range_is_a_bad_shape_not_a_crash(provider, payload):
    try:
        PARSERS[provider](payload, tenant_of(provider), NOW)
    except BadShape as exc:
        assert exc.field and exc.reason


@pytest.mark.parametrize("name, field", [
    ("waha/message.text.webjs.json", "session"),
    ("baileys/messages.upsert.revoke.partial.json", "instance"),  # posted by Evolution, instance "default"
])
@pytest.mark.parametrize("tenants_session", ["clinic-b", "Default", "default "])
def test_a_webhook_for_another_session_or_instance_is_refused_naming_it(name, field, tenants_session):
    # A server-wide webhook carries every tenant's sessions; names are compared exactly (case-sensitive).
    provider, body = as_posted(name)
    with pytest.raises(ForeignSession) as info:
        PARSERS[Provider(provider)](json.loads(body), tenant_of(Provider(provider), tenants_session), NOW)
    assert (info.value.field, info.value.reason) == (field, f"{field} 'default' is not this tenant's")


def test_meta_keeps_the_tenants_number_and_skips_another_numbers_changes():
    # Meta posts all of an app's numbers to one callback: another number's change is ignored, not refused.
    own = _meta_message(id="wamid.own")
    other = _meta_message(id="wamid.other")["entry"][0]
    other["changes"][0]["value"]["metadata"]["phone_number_id"] = "999000111"
    own["entry"].append(other)
    parsed = PARSERS[Provider.META](own, tenant_of(Provider.META), NOW)
    assert [a.event.message.provider_message_id for a in parsed.events] == ["wamid.own"]
    assert [(i.kind, i.reason) for i in parsed.ignored] == [
        ("messages", "phone_number_id '999000111' is not this tenant's")]
