from datetime import UTC, datetime, timedelta, timezone

import pytest

from shared.events import catalog as c
from shared.events.catalog import CATALOG, decode, route_of
from shared.events.envelope import Envelope
from shared.events.errors import InvalidEvent, PermanentFailure, UnknownEventType, UnsupportedEventVersion

AT = datetime(2026, 3, 29, 1, 30, tzinfo=UTC)
MESSAGE = c.WhatsAppMessage(
    provider=c.Provider.WAHA, provider_message_id="true_212600000000@c.us_3EB0", chat_id="212600000000@c.us",
    sender="+212600000000", sender_name="Amina", text="JOIN OPD", sent_at=AT,
    media=c.Media(url="http://waha/files/a.jpg", mimetype="image/jpeg", caption="x"),
)

PATIENT = c.Patient(chat_id="212600000000@c.us", phone="+212600000000", name="Amina", language="fr")

EXAMPLES: list[c.Event] = [
    c.WhatsAppMessageReceived(message=MESSAGE),
    c.WhatsAppMessageAck(provider=c.Provider.META, provider_message_id="wamid.X", status=c.AckStatus.READ, at=AT),
    c.WhatsAppSessionStatusChanged(provider=c.Provider.WAHA, session="default", status=c.SessionStatus.WORKING,
                                   connected=True, at=AT),
    c.MessageProcessed(message=MESSAGE, conversation_id="conv-1", processing_ms=1.5, language="fr",
                       intent=c.Intent(name="join_queue", arguments={"department": "OPD"})),
    c.QueueOpened(department="OPD", department_name="Outpatients", opened_at=AT, opened_by="nurse",
                  subscribers=[PATIENT]),
    c.QueueClosed(department="OPD", department_name="Outpatients", closed_at=AT, closed_by="schedule",
                  reason="closing time", cancelled_tickets=2),
    c.QueueStatusChanged(department="OPD", department_name="Outpatients", is_open=True, waiting=4,
                         estimated_wait_s=600, current_ticket="OPD-007"),
    c.TicketIssued(department="OPD", department_name="Outpatients", ticket="OPD-012", ticket_id="t1",
                   patient=PATIENT, position=3, via=c.TicketVia.WHATSAPP),
    c.TicketRefused(department="OPD", patient=PATIENT, code=c.RefusalCode.QUEUE_CLOSED, reason="closed"),
    c.TurnApproaching(department="OPD", department_name="Outpatients", ticket="OPD-012", ticket_id="t1",
                      patient=PATIENT, position=3),
    c.TurnReached(department="OPD", department_name="Outpatients", ticket="OPD-012", ticket_id="t1",
                  patient=PATIENT, counter="2"),
    c.TicketEnded(department="OPD", department_name="Outpatients", ticket="OPD-012", ticket_id="t1",
                  patient=PATIENT, outcome=c.TicketOutcome.SERVED, by="key:abc"),
    c.PositionReported(department="OPD", patient=PATIENT, ticket="OPD-012", position=2),
    c.OpeningSubscribed(department="OPD", department_name="Outpatients", patient=PATIENT, is_open=False),
    c.NotificationStatusChanged(notification_id="n1", status="sent", provider_message_id="wamid.Y"),
    c.BroadcastStatusChanged(broadcast_id="b1", status="partial", total=3, sent=2, failed=1),
]
TURN = next(e for e in EXAMPLES if isinstance(e, c.TurnReached))


def test_every_catalogued_event_has_an_example():
    assert {type(e) for e in EXAMPLES} == {route.model for route in CATALOG.values()}


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda e: e.type)
def test_envelope_round_trips_exactly(event):
    envelope = Envelope.new(event, tenant_id="clinic-a", occurred_at=AT)
    body = envelope.encode()
    decoded = decode(body)
    assert decoded == envelope
    assert type(decoded.data) is type(event)
    assert decoded.encode() == body


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda e: e.type)
def test_routing_key_is_the_type_and_exchange_is_the_publisher(event):
    route = route_of(event.type, event.version)
    assert route.routing_key == event.type
    assert route.exchange in {"wabus.gateway", "wabus.processor", "wabus.scheduler", "wabus.notifier"}


def test_design_routing_keys():
    keys = {t: r.exchange for (t, _), r in CATALOG.items()}
    assert keys == {
        "whatsapp.message.received": "wabus.gateway",
        "whatsapp.message.ack": "wabus.gateway",
        "whatsapp.session.status": "wabus.gateway",
        "message.processed": "wabus.processor",
        "queue.opened": "wabus.scheduler",
        "queue.closed": "wabus.scheduler",
        "queue.status.changed": "wabus.scheduler",
        "ticket.issued": "wabus.scheduler",
        "ticket.refused": "wabus.scheduler",
        "turn.approaching": "wabus.scheduler",
        "turn.reached": "wabus.scheduler",
        "ticket.ended": "wabus.scheduler",
        "position.reported": "wabus.scheduler",
        "opening.subscribed": "wabus.scheduler",
        "notification.status": "wabus.notifier",
        "broadcast.status": "wabus.notifier",
    }


def test_child_keeps_tenant_and_chain():
    first = Envelope.new(EXAMPLES[0], tenant_id="clinic-a")
    second = first.child(EXAMPLES[3])
    third = second.child(EXAMPLES[7])
    assert first.correlation_id == str(first.id)
    assert (second.tenant_id, second.correlation_id, second.causation_id) == ("clinic-a", str(first.id), str(first.id))
    assert (third.correlation_id, third.causation_id) == (str(first.id), str(second.id))


def test_occurred_at_is_kept_in_utc():
    envelope = Envelope.new(TURN, tenant_id="clinic-a",
                            occurred_at=datetime(2026, 3, 29, 3, 30, tzinfo=timezone(timedelta(hours=2))))
    assert envelope.occurred_at == AT and envelope.occurred_at.tzinfo == UTC
    assert b'"occurred_at":"2026-03-29T01:30:00Z"' in envelope.encode()


def _body(**changes) -> bytes:
    envelope = Envelope.new(TURN, tenant_id="clinic-a", occurred_at=AT)
    raw = envelope.model_dump(mode="json")
    raw.update(changes)
    import json

    return json.dumps(raw).encode()


def test_unknown_type_is_a_typed_permanent_error():
    with pytest.raises(UnknownEventType) as info:
        decode(_body(type="turn.vanished"))
    assert isinstance(info.value, PermanentFailure)
    assert "turn.vanished" in str(info.value)


def test_unknown_version_is_a_typed_permanent_error():
    with pytest.raises(UnsupportedEventVersion) as info:
        decode(_body(version=2))
    assert "version 2" in str(info.value) and "[1]" in str(info.value)


@pytest.mark.parametrize("body, reason", [
    (b"not json", "not JSON"),
    (b"[1, 2]", "JSON object"),
])
def test_garbage_is_invalid(body, reason):
    with pytest.raises(InvalidEvent, match=reason):
        decode(body)


def test_invalid_payload_names_the_field():
    raw = _body()
    with pytest.raises(InvalidEvent, match="data.ticket"):
        decode(raw.replace(b'"ticket": "OPD-012", ', b""))


def test_a_body_in_wabus_own_layout_is_checked_as_thoroughly():
    # wabus's own bodies take a shorter way in (their type is read from where wabus writes it).
    compact = Envelope.new(TURN, tenant_id="clinic-a", occurred_at=AT).encode()
    with pytest.raises(InvalidEvent, match="data.ticket"):
        decode(compact.replace(b'"ticket":"OPD-012",', b""))
    with pytest.raises(InvalidEvent, match="tenant_id"):
        decode(compact.replace(b'"tenant_id":"clinic-a"', b'"tenant_id":"Clinic A!"'))
    with pytest.raises(InvalidEvent, match="not JSON"):
        decode(b'{"id":"","type":"\xff","version":1,"data":{}}')
    # A later "type" overrides the first one in JSON: the later one decides, as in the full parse.
    with pytest.raises(UnknownEventType):
        decode(compact[:-1] + b',"type":"turn.vanished"}')


def test_bad_tenant_is_invalid():
    with pytest.raises(InvalidEvent, match="tenant_id"):
        decode(_body(tenant_id="Clinic A!"))


def test_naive_time_is_invalid():
    with pytest.raises(InvalidEvent, match="occurred_at"):
        decode(_body(occurred_at="2026-03-29T01:30:00"))
