"""The adapters over real HTTP on loopback: against the fake provider, and the fake's acks against the
gateway's own signature checks and parsers. No broker or database is needed."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

from services.gateway.domain import Tenant
from services.gateway.providers import PARSERS
from services.gateway.signatures import Unauthenticated, verify
from services.notifier.fake_provider import FakeProvider, running_fake_provider
from services.notifier.providers import (
    FailureKind,
    SendFailed,
    SendingProvider,
    Sent,
    SessionState,
    build_provider,
)
from shared.events.catalog import AckStatus, Provider, SessionStatus, WhatsAppMessageAck
from tests.samples import sample_bytes
from tests.support import eventually

API_KEY = "fake-provider-key"
WEBHOOK_SECRET = "fake-provider-webhook-secret"
PHONE = "+212612345678"
DIGITS = "212612345678"
CHAT = "212612345678@c.us"
META_NUMBER_ID = "106540352242922"
SESSION = {Provider.WAHA: "default", Provider.EVOLUTION: "default", Provider.META: META_NUMBER_ID}
SENDING = [Provider.WAHA, Provider.EVOLUTION, Provider.META]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def fake() -> AsyncIterator[FakeProvider]:
    async with running_fake_provider(api_key=API_KEY, sessions=("default", META_NUMBER_ID), ack_delay_s=0.05) as fake:
        yield fake


def adapter(provider: Provider, http: aiohttp.ClientSession, base_url: str, *, timeout_s: float = 5.0,
            api_key: str = API_KEY) -> SendingProvider:
    return build_provider(provider, http=http, base_url=base_url, api_key=api_key, timeout_s=timeout_s)


async def send_failure(provider: SendingProvider, session: str, text: str = "Your turn: A12") -> SendFailed:
    with pytest.raises(SendFailed) as caught:
        await provider.send_text(session, PHONE, text)
    return caught.value


# --- the requests, exactly as each provider documents them -------------------------------------


class Recorder:
    """A loopback server answering with the providers' documented responses, keeping each request."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, CIMultiDict, bytes]] = []
        self.url = ""

    async def answer(self, request: web.Request) -> web.Response:
        self.requests.append((request.method, request.path_qs, CIMultiDict(request.headers), await request.read()))
        path = request.path
        if path == "/api/sendText":
            return web.json_response({"id": f"true_{CHAT}_3EB0C767D26A1D0C2D8B", "fromMe": True}, status=201)
        if path.startswith("/message/sendText/"):
            return web.Response(body=sample_bytes("evolution/_api.send-text.response.json"), status=201,
                                content_type="application/json")
        if path.endswith("/messages") and request.method == "POST":
            return web.Response(body=sample_bytes("meta/_api.send-text.response.json"), content_type="application/json")
        if path.startswith("/api/sessions/"):
            return web.json_response({"name": "default", "status": "WORKING"})
        if path.startswith("/instance/connectionState/"):
            return web.json_response({"instance": {"instanceName": "clinic-a", "state": "open"}})
        return web.json_response([])


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    recorder = Recorder()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", recorder.answer)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    recorder.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield recorder
    await runner.cleanup()


async def test_waha_posts_send_text_with_its_api_key_and_reads_the_bare_id(http, recorder):
    waha = adapter(Provider.WAHA, http, recorder.url)
    assert await waha.send_text("default", PHONE, "Your turn: A12") == Sent("3EB0C767D26A1D0C2D8B", CHAT)
    await waha.session_state("default")
    await waha.find_sent("default", PHONE, "Your turn: A12", datetime.now(UTC))
    (method, path, headers, body), state, messages = recorder.requests
    assert (method, path, headers["X-Api-Key"]) == ("POST", "/api/sendText", API_KEY)
    assert json.loads(body) == {"session": "default", "chatId": CHAT, "text": "Your turn: A12"}
    assert state[:2] == ("GET", "/api/sessions/default")
    assert messages[:2] == ("GET", f"/api/default/chats/{CHAT}/messages?limit=50&downloadMedia=false")
    assert messages[2]["X-Api-Key"] == API_KEY


async def test_evolution_posts_number_and_text_with_its_apikey_header(http, recorder):
    evolution = adapter(Provider.EVOLUTION, http, recorder.url)
    # The sample answer names another chat: the adapter reports the one Evolution used.
    assert await evolution.send_text("clinic-a", PHONE, "Olá!") == Sent("BAE594145F4C59B4", "553198296801@c.us")
    await evolution.session_state("clinic-a")
    (method, path, headers, body), (_, state_path, state_headers, _) = recorder.requests
    assert (method, path, headers["apikey"]) == ("POST", "/message/sendText/clinic-a", API_KEY)
    assert json.loads(body) == {"number": DIGITS, "text": "Olá!"}
    assert (state_path, state_headers["apikey"]) == ("/instance/connectionState/clinic-a", API_KEY)


async def test_meta_posts_a_text_message_with_the_bearer_token(http, recorder):
    meta = adapter(Provider.META, http, recorder.url)
    sent = await meta.send_text(META_NUMBER_ID, PHONE, "Your turn: A12")
    assert sent == Sent("wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBJCOTY3NDc0NDFDRUI3NTA0Q0UA", "16505551234@c.us")
    ((method, path, headers, body),) = recorder.requests
    assert (method, path, headers["Authorization"]) == ("POST", f"/v23.0/{META_NUMBER_ID}/messages",
                                                        f"Bearer {API_KEY}")
    assert json.loads(body) == {"messaging_product": "whatsapp", "recipient_type": "individual", "to": DIGITS,
                                "type": "text", "text": {"body": "Your turn: A12", "preview_url": False}}


# --- against the fake --------------------------------------------------------------------------


@pytest.mark.parametrize("provider", SENDING)
async def test_a_send_is_recorded_once_under_the_id_the_adapter_returns(provider, http, fake):
    sent = await adapter(provider, http, fake.url).send_text(SESSION[provider], PHONE, "Your turn: A12")
    recorded = await fake.next_sent(timeout=5)
    assert (recorded.provider, recorded.session, recorded.chat_id, recorded.to, recorded.text) == (
        provider, SESSION[provider], CHAT, DIGITS, "Your turn: A12")
    assert sent == Sent(recorded.provider_message_id, CHAT)
    assert len(fake.sent) == 1


@pytest.mark.parametrize("provider", SENDING)
async def test_no_answer_after_the_request_went_out_is_an_unknown_outcome(provider, http, fake):
    fake.hang_next(1, hang_s=30)
    failed = await send_failure(adapter(provider, http, fake.url, timeout_s=0.5), SESSION[provider])
    assert failed.kind is FailureKind.OUTCOME_UNKNOWN and failed.maybe_sent and not failed.transient
    assert len(fake.sent) == 1  # it was sent: retrying blindly would send it twice


async def test_waha_find_sent_reconciles_a_send_whose_answer_never_came(http, fake):
    waha = adapter(Provider.WAHA, http, fake.url, timeout_s=0.5)
    since = datetime.now(UTC)
    fake.hang_next(1, hang_s=30)
    await send_failure(waha, "default", "Your turn: A12")
    (recorded,) = fake.sent
    assert await waha.find_sent("default", PHONE, "Your turn: A12", since) == recorded.provider_message_id
    assert await waha.find_sent("default", PHONE, "Your turn: A13", since) is None
    assert await waha.find_sent("default", "+212612345679", "Your turn: A12", since) is None


@pytest.mark.parametrize("provider", [Provider.EVOLUTION, Provider.META])
async def test_evolution_and_meta_cannot_look_a_send_up(provider, http, fake):
    sending = adapter(provider, http, fake.url)
    await sending.send_text(SESSION[provider], PHONE, "hi")
    assert await sending.find_sent(SESSION[provider], PHONE, "hi", datetime(2020, 1, 1, tzinfo=UTC)) is None


@pytest.mark.parametrize("provider", SENDING)
async def test_rate_limit_is_transient_and_says_when_to_retry(provider, http, fake):
    fake.rate_limit(1, retry_after_s=2)
    sending = adapter(provider, http, fake.url)
    failed = await send_failure(sending, SESSION[provider])
    assert (failed.kind, failed.retry_after_s, failed.transient, failed.status) == (
        FailureKind.RATE_LIMITED, 2.0, True, 429)
    assert fake.sent == []
    await sending.send_text(SESSION[provider], PHONE, "after the pause")
    assert len(fake.sent) == 1


@pytest.mark.parametrize("provider", SENDING)
async def test_server_error_is_transient_and_nothing_was_sent(provider, http, fake):
    fake.fail_next(1, status=500)
    failed = await send_failure(adapter(provider, http, fake.url), SESSION[provider])
    assert (failed.kind, failed.status, failed.transient) == (FailureKind.PROVIDER_ERROR, 500, True)
    assert fake.sent == []


@pytest.mark.parametrize("provider, kind, reason", [
    (Provider.WAHA, FailureKind.REJECTED, "not registered on WhatsApp"),
    (Provider.EVOLUTION, FailureKind.INVALID_RECIPIENT, "not on WhatsApp"),
    (Provider.META, FailureKind.INVALID_RECIPIENT, "Message undeliverable"),
])
async def test_a_refused_recipient_is_permanent_with_the_providers_reason(provider, kind, reason, http, fake):
    fake.reject(PHONE)
    failed = await send_failure(adapter(provider, http, fake.url), SESSION[provider])
    assert (failed.kind, failed.status, failed.transient, failed.maybe_sent) == (kind, 400, False, False)
    assert reason in failed.reason and DIGITS not in failed.reason
    assert fake.sent == []


@pytest.mark.parametrize("provider, status, provider_status", [
    (Provider.WAHA, SessionStatus.SCAN_QR, "SCAN_QR_CODE"),
    (Provider.EVOLUTION, SessionStatus.STOPPED, "close"),
])
async def test_a_disconnected_session_holds_sends_until_it_is_back(provider, status, provider_status, http, fake):
    sending = adapter(provider, http, fake.url)
    fake.disconnect("default")
    failed = await send_failure(sending, "default")
    assert failed.kind is FailureKind.SESSION_NOT_READY and failed.transient
    assert await sending.session_state("default") == SessionState(status, connected=False, can_send=False,
                                                                   provider_status=provider_status)
    fake.connect("default")
    await sending.send_text("default", PHONE, "back")
    assert (await sending.session_state("default")).can_send and len(fake.sent) == 1


@pytest.mark.parametrize("provider, provider_status", [
    (Provider.WAHA, "WORKING"), (Provider.EVOLUTION, "open"), (Provider.META, "cloud-api"),
])
async def test_session_state_of_a_working_session(provider, provider_status, http, fake):
    state = await adapter(provider, http, fake.url).session_state(SESSION[provider])
    assert (state.status, state.connected, state.can_send, state.provider_status) == (
        SessionStatus.WORKING, True, True, provider_status)


@pytest.mark.parametrize("provider", [Provider.WAHA, Provider.EVOLUTION])
async def test_an_unknown_session_is_not_found(provider, http, fake):
    sending = adapter(provider, http, fake.url)
    with pytest.raises(SendFailed) as caught:
        await sending.session_state("nobody")
    assert caught.value.kind is FailureKind.SESSION_NOT_FOUND
    failed = await send_failure(sending, "nobody")
    assert failed.kind is FailureKind.SESSION_NOT_FOUND and not failed.transient


async def test_meta_unknown_phone_number_id_is_not_found(http, fake):
    failed = await send_failure(adapter(Provider.META, http, fake.url), "999999999999999")
    assert failed.kind is FailureKind.SESSION_NOT_FOUND and "code 100/33" in failed.reason


@pytest.mark.parametrize("provider", SENDING)
async def test_a_wrong_key_is_unauthorized(provider, http, fake):
    failed = await send_failure(adapter(provider, http, fake.url, api_key="wrong"), SESSION[provider])
    assert (failed.kind, failed.status, failed.transient) == (FailureKind.UNAUTHORIZED, 401, False)


@pytest.mark.parametrize("provider", SENDING)
async def test_nobody_listening_is_unreachable_and_safe_to_retry(provider, http):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    failed = await send_failure(adapter(provider, http, f"http://127.0.0.1:{port}"), SESSION[provider])
    assert failed.kind is FailureKind.UNREACHABLE and failed.transient and not failed.maybe_sent


# --- acks, checked by the gateway's own code ---------------------------------------------------


class WebhookReceiver:
    def __init__(self) -> None:
        self.received: asyncio.Queue[tuple[str, CIMultiDict, bytes]] = asyncio.Queue()
        self.url = ""

    async def hook(self, request: web.Request) -> web.Response:
        await self.received.put((request.match_info["provider"], CIMultiDict(request.headers), await request.read()))
        return web.json_response({"accepted": 1})

    async def next(self) -> tuple[str, CIMultiDict, bytes]:
        return await asyncio.wait_for(self.received.get(), timeout=5)


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    app = web.Application()
    app.router.add_post("/webhooks/{provider}/{tenant}", receiver.hook)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    receiver.url = f"http://127.0.0.1:{runner.addresses[0][1]}/webhooks/{{provider}}/clinic-a"
    yield receiver
    await runner.cleanup()


@pytest.mark.parametrize("provider", SENDING)
async def test_acks_come_back_signed_and_parse_into_the_gateways_ack_events(provider, http, receiver):
    async with running_fake_provider(api_key=API_KEY, sessions=("default", META_NUMBER_ID), ack_delay_s=0.02,
                                     acks=("server", "delivered", "read"), webhook_url=receiver.url,
                                     webhook_secret=WEBHOOK_SECRET) as fake:
        sent = await adapter(provider, http, fake.url).send_text(SESSION[provider], PHONE, "Your turn: A12")
        tenant = Tenant("clinic-a", provider, SESSION[provider], WEBHOOK_SECRET, None, "MA", "fr")
        statuses = []
        for _ in range(3):
            posted_to, headers, body = await receiver.next()
            assert posted_to == provider.value
            verify(tenant, headers, body, now_ms=int(time.time() * 1000), replay_window_s=300)
            (accepted,) = PARSERS[provider](json.loads(body), tenant, datetime.now(UTC)).events
            ack = accepted.event
            assert isinstance(ack, WhatsAppMessageAck)
            assert (ack.provider, ack.provider_message_id, ack.chat_id) == (provider, sent.provider_message_id, CHAT)
            statuses.append(ack.status)
        assert statuses == [AckStatus.SERVER, AckStatus.DELIVERED, AckStatus.READ]
        other_tenant = Tenant("clinic-a", provider, SESSION[provider], "another-secret", None, "MA", "fr")
        with pytest.raises(Unauthenticated):
            verify(other_tenant, headers, body, now_ms=int(time.time() * 1000), replay_window_s=300)


async def test_waha_ack_envelope_is_waha_s_current_one(http, receiver):
    async with running_fake_provider(webhook_url=receiver.url, webhook_secret=WEBHOOK_SECRET, ack_delay_s=0.01,
                                     acks=("server",)) as fake:
        await adapter(Provider.WAHA, http, fake.url).send_text("default", PHONE, "hi")
        _, headers, body = await receiver.next()
    event = json.loads(body)
    assert event["id"].startswith("evt_") and len(event["id"]) == 30
    assert {"timestamp", "event", "session", "me", "payload", "engine", "environment"} <= set(event)
    assert (event["event"], event["payload"]["ack"], event["payload"]["ackName"]) == ("message.ack", 1, "SERVER")
    assert headers["X-Webhook-Hmac-Algorithm"] == "sha512" and headers["X-Webhook-Timestamp"].isdigit()
    assert len(headers["X-Webhook-Request-Id"]) == 26


async def test_a_webhook_that_cannot_be_reached_is_logged_and_the_fake_keeps_serving(http, caplog):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        nowhere = f"http://127.0.0.1:{probe.getsockname()[1]}/webhooks/{{provider}}/clinic-a"
    caplog.set_level(logging.WARNING, logger="services.notifier.fake_provider")
    async with running_fake_provider(webhook_url=nowhere, ack_delay_s=0.01, acks=("server",)) as fake:
        waha = adapter(Provider.WAHA, http, fake.url)
        await waha.send_text("default", PHONE, "first")
        await eventually(_ack_failure_logged(caplog), timeout=5, what="a logged ack failure")
        await waha.send_text("default", PHONE, "second")
        assert [s.text for s in fake.sent] == ["first", "second"]


def _ack_failure_logged(caplog):
    async def check() -> bool:
        return any(r.getMessage() == "ack webhook failed" for r in caplog.records)
    return check


# --- the control API, over HTTP ----------------------------------------------------------------


async def test_control_api_over_http(http, fake):
    waha = adapter(Provider.WAHA, http, fake.url)
    async with http.post(f"{fake.url}/_fake/control", json={"fail_next": {"count": 1, "status": 503},
                                                            "sessions": {"clinic-b": "WORKING"}}) as response:
        assert response.status == 200
        assert (await response.json())["fail_next"] == {"count": 1, "status": 503}
    assert (await send_failure(waha, "default")).status == 503
    await waha.send_text("clinic-b", PHONE, "Your turn: A12")
    async with http.get(f"{fake.url}/_fake/sent") as response:
        (sent,) = (await response.json())["sent"]
    assert (sent["provider"], sent["session"], sent["chat_id"], sent["text"]) == ("waha", "clinic-b", CHAT,
                                                                                  "Your turn: A12")
    assert sent["provider_message_id"] and sent["at"]
    async with http.post(f"{fake.url}/_fake/control", json={"hang_next": {"count": -1}}) as response:
        assert response.status == 422 and (await response.json())["field"] == "hang_next.count"
    async with http.delete(f"{fake.url}/_fake/sent") as response:
        assert (await response.json()) == {"cleared": 1} and fake.sent == []
    async with http.post(f"{fake.url}/_fake/reset") as response:
        assert "clinic-b" not in (await response.json())["sessions"]


async def test_latency_applies_to_the_api_not_to_the_control_api(http, fake):
    fake.set_latency(0.3)
    started = time.monotonic()
    await adapter(Provider.WAHA, http, fake.url).session_state("default")
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    async with http.get(f"{fake.url}/_fake/control") as response:
        assert (await response.json())["latency_s"] == 0.3
    assert time.monotonic() - started < 0.3


# --- the log provider --------------------------------------------------------------------------


async def test_log_provider_records_and_logs_without_the_number(caplog):
    caplog.set_level(logging.INFO, logger="services.notifier.providers.log")
    log_provider = build_provider("log")
    since = datetime.now(UTC)
    sent = await log_provider.send_text("default", PHONE, "Your turn: A12")
    assert sent.provider_message_id.startswith("log-") and sent.chat_id == CHAT
    assert await log_provider.find_sent("default", PHONE, "Your turn: A12", since) == sent.provider_message_id
    assert await log_provider.find_sent("default", PHONE, "something else", since) is None
    assert (await log_provider.session_state("default")).can_send
    (record,) = [r for r in caplog.records if r.getMessage() == "message logged, not sent"]
    assert record.to != PHONE and record.to.startswith("+2126")
    assert DIGITS not in caplog.text
