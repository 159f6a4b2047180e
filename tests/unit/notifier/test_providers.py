"""How each adapter reads its provider's answers: pure functions over real response and error shapes."""

import argparse
import json
from datetime import UTC, datetime, timedelta

import pytest

from services.notifier import cli
from services.notifier.providers import (
    Answer,
    FailureKind,
    SendFailed,
    Sent,
    build_provider,
    evolution,
    failure_by_status,
    masked,
    meta,
    recipient_digits,
    retry_after_seconds,
    waha,
)
from shared.events.catalog import Provider, SessionStatus
from tests.samples import sample_bytes

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def answer(status: int, body, retry_after: str | None = None) -> Answer:
    return Answer(status, body, retry_after, NOW)


# --- shared -----------------------------------------------------------------------------------


@pytest.mark.parametrize("value, seconds", [
    ("120", 120.0),
    ("0", 0.0),
    ("1.5", 1.5),
    ("Sun, 22 Nov 2026 12:00:30 GMT", 30.0),
    ("Sun, 22 Nov 2026 11:59:00 GMT", 0.0),  # a date in the past: retry now
    ("-5", None),
    ("soon", None),
    ("", None),
    (None, None),
])
def test_retry_after_reads_seconds_and_http_dates(value, seconds):
    assert retry_after_seconds(value, NOW) == seconds


@pytest.mark.parametrize("status, kind", [
    (429, FailureKind.RATE_LIMITED),
    (401, FailureKind.UNAUTHORIZED),
    (403, FailureKind.UNAUTHORIZED),
    (404, FailureKind.SESSION_NOT_FOUND),
    (408, FailureKind.PROVIDER_ERROR),
    (500, FailureKind.PROVIDER_ERROR),
    (503, FailureKind.PROVIDER_ERROR),
    (400, FailureKind.REJECTED),
    (409, FailureKind.REJECTED),
])
def test_http_status_alone_decides_when_the_provider_says_nothing_more(status, kind):
    assert failure_by_status(answer(status, ""), "").kind is kind


def test_build_provider_refuses_a_setup_that_cannot_send():
    with pytest.raises(ValueError, match="base URL"):
        build_provider("evolution")  # no default: Evolution's usual port is the gateway's
    with pytest.raises(ValueError, match="client session"):
        build_provider("waha")
    assert build_provider("log").provider is Provider.LOG


def test_transient_failures_are_the_ones_safe_to_try_again():
    assert {k for k in FailureKind if SendFailed(k, "").transient} == {
        FailureKind.UNREACHABLE, FailureKind.PROVIDER_ERROR, FailureKind.RATE_LIMITED, FailureKind.SESSION_NOT_READY}
    unknown = SendFailed(FailureKind.OUTCOME_UNKNOWN, "no answer")
    assert unknown.maybe_sent and not unknown.transient
    assert not SendFailed(FailureKind.REJECTED, "").maybe_sent


def test_service_unavailable_keeps_its_retry_after():
    assert failure_by_status(answer(503, "", "7"), "down").retry_after_s == 7.0


@pytest.mark.parametrize("phone, digits", [("+212612345678", "212612345678"), ("+15550100123", "15550100123")])
def test_recipient_digits_from_e164(phone, digits):
    assert recipient_digits(phone) == digits


@pytest.mark.parametrize("phone", ["212612345678", "+0612345678", "+2126 1234 5678", "", "+12"])
def test_a_number_not_in_e164_is_refused_before_any_request(phone):
    with pytest.raises(SendFailed) as caught:
        recipient_digits(phone)
    assert caught.value.kind is FailureKind.INVALID_RECIPIENT and not caught.value.transient


def test_reasons_never_carry_a_whole_phone_number():
    reason = masked("The number 212612345678 is not registered (code 131026)")
    assert "212612345678" not in reason and "2126" in reason and "131026" in reason
    assert len(masked("x" * 1000)) == 300


# --- WAHA -------------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [
    {"id": "true_212612345678@c.us_3EB0C767D26A1D0C2D8B", "fromMe": True},  # WAMessage
    {"id": {"fromMe": True, "remote": "212612345678@c.us", "id": "3EB0C767D26A1D0C2D8B",
            "_serialized": "true_212612345678@c.us_3EB0C767D26A1D0C2D8B"}},  # raw WEBJS id object
    {"key": {"remoteJid": "212612345678@s.whatsapp.net", "fromMe": True, "id": "3EB0C767D26A1D0C2D8B"}},  # NOWEB
])
def test_waha_send_answer_gives_the_bare_id_acks_refer_to(body):
    assert waha.sent_of(body, "212612345678@c.us") == Sent("3EB0C767D26A1D0C2D8B", "212612345678@c.us")


def test_waha_send_answer_without_an_id_is_not_a_send():
    assert waha.sent_of({"body": "hi"}, "212612345678@c.us") is None
    assert waha.sent_of("Created", "212612345678@c.us") is None


def test_waha_ack_sample_ids_split_like_the_gateway_splits_them():
    ack = json.loads(sample_bytes("waha/message.ack.json"))["payload"]
    assert waha.split_id(ack["id"]) == ("11111111111@c.us", "4CC5EDD64BC22EBA6D639F2AF571346C")
    assert waha.split_id("BAE594145F4C59B4") == (None, "BAE594145F4C59B4")


def test_waha_session_not_working_is_held_not_failed():
    body = {"error": "Session status is not as expected. Try again later or restart the session",
            "session": "default", "status": "SCAN_QR_CODE", "expected": ["WORKING"]}
    failed = waha.failure(answer(422, body))
    assert failed.kind is FailureKind.SESSION_NOT_READY and failed.transient
    assert "SCAN_QR_CODE" in failed.reason


@pytest.mark.parametrize("status, body, kind, reason", [
    (400, {"statusCode": 400, "message": ["chatId should not be empty"], "error": "Bad Request"},
     FailureKind.REJECTED, "chatId should not be empty"),
    (401, {"message": "Unauthorized", "statusCode": 401}, FailureKind.UNAUTHORIZED, "Unauthorized"),
    (404, {"statusCode": 404, "message": "We didn't find a session with name 'clinic'", "error": "Not Found"},
     FailureKind.SESSION_NOT_FOUND, "didn't find a session"),
    (500, {"statusCode": 500, "exception": {"message": "2 UNKNOWN: server returned error 463", "code": 2}},
     FailureKind.PROVIDER_ERROR, "error 463"),
    (502, "<html>Bad Gateway</html>", FailureKind.PROVIDER_ERROR, "Bad Gateway"),
])
def test_waha_errors_keep_the_reason_waha_gave(status, body, kind, reason):
    failed = waha.failure(answer(status, body))
    assert failed.kind is kind and reason in failed.reason and failed.status == status


def test_waha_rate_limit_honours_retry_after():
    failed = waha.failure(answer(429, {"statusCode": 429, "message": "Too Many Requests"}, "3"))
    assert (failed.kind, failed.retry_after_s, failed.transient) == (FailureKind.RATE_LIMITED, 3.0, True)


@pytest.mark.parametrize("status, known, can_send", [
    ("WORKING", SessionStatus.WORKING, True),
    ("SCAN_QR_CODE", SessionStatus.SCAN_QR, False),
    ("PASSKEY_REQUIRED", SessionStatus.SCAN_QR, False),
    ("STARTING", SessionStatus.STARTING, False),
    ("FAILED", SessionStatus.FAILED, False),
    ("STOPPED", SessionStatus.STOPPED, False),
    ("SOMETHING_NEW", SessionStatus.FAILED, False),
])
def test_waha_session_statuses(status, known, can_send):
    state = waha.session_state_of(status)
    assert (state.status, state.can_send, state.connected, state.provider_status) == (known, can_send, can_send,
                                                                                      status)


def wa_message(id_: str, body: str, at: datetime, from_me: bool = True) -> dict:
    return {"id": f"{str(from_me).lower()}_212612345678@c.us_{id_}", "body": body, "fromMe": from_me,
            "timestamp": int(at.timestamp())}


def test_waha_find_sent_matches_our_message_with_that_text_since_the_attempt():
    since = NOW + timedelta(seconds=0.4)  # WAHA's whole seconds put our send at NOW
    messages = [
        wa_message("LATER", "Your turn: A12", NOW + timedelta(seconds=30)),
        wa_message("OURS", "Your turn: A12", NOW),
        wa_message("OLDER", "Your turn: A12", NOW - timedelta(minutes=5)),
        wa_message("INCOMING", "Your turn: A12", NOW, from_me=False),
        wa_message("OTHER", "Your turn: A13", NOW),
    ]
    assert waha.matching_sent(messages, "Your turn: A12", since) == "OURS"
    assert waha.matching_sent(messages, "never sent", since) is None
    assert waha.matching_sent({"error": "odd"}, "Your turn: A12", since) is None


def test_waha_find_sent_never_answers_an_id_another_notification_holds():
    # The same text twice, a second apart: the earlier one is another row's message.
    messages = [wa_message("SECOND", "HELP reply", NOW + timedelta(seconds=1)), wa_message("FIRST", "HELP reply", NOW)]
    assert waha.matching_sent(messages, "HELP reply", NOW - timedelta(seconds=5)) == "FIRST"
    assert waha.matching_sent(messages, "HELP reply", NOW - timedelta(seconds=5), {"FIRST"}) == "SECOND"
    assert waha.matching_sent(messages, "HELP reply", NOW - timedelta(seconds=5), {"FIRST", "SECOND"}) is None


# --- Evolution --------------------------------------------------------------------------------


def test_evolution_send_answer_sample_gives_key_id_and_the_chat_it_used():
    body = json.loads(sample_bytes("evolution/_api.send-text.response.json"))
    assert evolution.sent_of(body, "553198296801") == Sent("BAE594145F4C59B4", "553198296801@c.us")
    assert evolution.sent_of({"status": "PENDING"}, "553198296801") is None


def test_evolution_number_not_on_whatsapp_is_a_permanent_invalid_recipient():
    body = {"status": 400, "error": "Bad Request", "response": {"message": [
        {"exists": False, "jid": "212612345678@s.whatsapp.net", "number": "212612345678"}]}}
    failed = evolution.failure(answer(400, body))
    assert failed.kind is FailureKind.INVALID_RECIPIENT and not failed.transient
    assert "not on WhatsApp" in failed.reason and "212612345678" not in failed.reason


@pytest.mark.parametrize("status, message", [
    (500, ["Error: Connection Closed"]),  # evolution-api#1772
    (400, ["Error: Connection Closed"]),  # evolution-api#2229
    (500, "Connection Closed"),  # evolution-api#1286: a string, not a list
])
def test_evolution_connection_closed_is_a_session_not_ready(status, message):
    body = {"status": status, "error": "Internal Server Error", "response": {"message": message}}
    assert evolution.failure(answer(status, body)).kind is FailureKind.SESSION_NOT_READY


def test_evolution_missing_instance_and_bad_key():
    missing = {"status": 404, "error": "Not Found", "response": {"message": ['The "clinic" instance does not exist']}}
    failed = evolution.failure(answer(404, missing))
    assert failed.kind is FailureKind.SESSION_NOT_FOUND and "does not exist" in failed.reason
    unauthorized = {"status": 401, "error": "Unauthorized", "response": {"message": "Unauthorized"}}
    assert evolution.failure(answer(401, unauthorized)).kind is FailureKind.UNAUTHORIZED


@pytest.mark.parametrize("state, known", [
    ("open", SessionStatus.WORKING), ("connecting", SessionStatus.STARTING), ("close", SessionStatus.STOPPED),
    ("refused", SessionStatus.FAILED),
])
def test_evolution_connection_states(state, known):
    s = evolution.session_state_of(state)
    assert (s.status, s.can_send) == (known, known is SessionStatus.WORKING)


# --- Meta -------------------------------------------------------------------------------------


def test_meta_send_answer_sample_gives_the_wamid_and_wa_id():
    body = json.loads(sample_bytes("meta/_api.send-text.response.json"))
    assert meta.sent_of(body, "16505551234") == Sent("wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBJCOTY3NDc0NDFDRUI3NTA0Q0UA",
                                                     "16505551234@c.us")
    assert meta.sent_of({"messages": []}, "16505551234") is None


def meta_error(code: int, message: str = "", subcode: int | None = None, details: str | None = None) -> dict:
    error = {"message": message or f"(#{code}) error", "type": "OAuthException", "code": code,
             "fbtrace_id": "AbCdEfGhIjK"}
    if subcode is not None:
        error["error_subcode"] = subcode
    if details:
        error["error_data"] = {"messaging_product": "whatsapp", "details": details}
    return {"error": error}


@pytest.mark.parametrize("status, code, subcode, kind", [
    (400, 131026, None, FailureKind.INVALID_RECIPIENT),
    (400, 131030, None, FailureKind.INVALID_RECIPIENT),
    (400, 131047, None, FailureKind.WINDOW_CLOSED),
    (400, 130429, None, FailureKind.RATE_LIMITED),
    (400, 131056, None, FailureKind.RATE_LIMITED),
    (400, 80007, None, FailureKind.RATE_LIMITED),
    (401, 190, 463, FailureKind.UNAUTHORIZED),
    (400, 100, 33, FailureKind.SESSION_NOT_FOUND),
    (400, 133010, None, FailureKind.SESSION_NOT_READY),
    (500, 131000, None, FailureKind.PROVIDER_ERROR),
    (400, 100, None, FailureKind.REJECTED),  # an invalid parameter: the HTTP status decides
    (503, 999999, None, FailureKind.PROVIDER_ERROR),
])
def test_meta_error_codes(status, code, subcode, kind):
    assert meta.failure(answer(status, meta_error(code, subcode=subcode))).kind is kind


def test_meta_reason_names_code_details_and_trace():
    body = meta_error(131047, "Re-engagement message",
                      details="Message failed to send because more than 24 hours have passed since the customer "
                              "last replied to this number.")
    failed = meta.failure(answer(400, body))
    assert failed.kind is FailureKind.WINDOW_CLOSED and not failed.transient
    assert "Re-engagement message: Message failed to send" in failed.reason
    assert "code 131047" in failed.reason and "fbtrace_id AbCdEfGhIjK" in failed.reason


def test_meta_rate_limit_honours_retry_after_when_given():
    failed = meta.failure(answer(429, meta_error(130429, "(#130429) Rate limit hit"), "2"))
    assert (failed.kind, failed.retry_after_s) == (FailureKind.RATE_LIMITED, 2.0)


def test_meta_answer_that_is_not_a_graph_error_falls_back_to_the_status():
    assert meta.failure(answer(502, "Bad Gateway")).kind is FailureKind.PROVIDER_ERROR


# --- command line -----------------------------------------------------------------------------


def test_fake_provider_subcommand_parses_its_options():
    parser = argparse.ArgumentParser(prog="wabus")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["fake-provider", "--port", "3100", "--webhook-url", "http://127.0.0.1:8080/x",
                              "--webhook-secret", "s", "--session", "default", "--session", "clinic-b",
                              "--read-acks"])
    assert (args.port, args.host, args.sessions, args.webhook_secret, args.read_acks) == (
        3100, "127.0.0.1", ["default", "clinic-b"], "s", True)
    assert callable(args.func)
