"""A fake WhatsApp provider for tests and demos: WAHA's, Evolution's and Meta's send APIs on one port.

It answers with the real shapes (PROVIDERS.md), records every message it accepts, posts acks back
to a webhook as the real ones do, and misbehaves on request through a JSON control API under
`/_fake/` (docs/providers.md). Run it with `wabus fake-provider` or
`python -m services.notifier.fake_provider`; tests use `running_fake_provider()`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import math
import os
import secrets
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any, Literal

import aiohttp
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.events.catalog import Provider
from shared.events.logs import configure_logging, mask_phone
from shared.events.runtime import settle_garbage_collector
from shared.phones import Jid, parse_jid

log = logging.getLogger(__name__)

ME = "15550100000"  # the fake's own number: 555-01xx numbers are reserved for fiction
WABA_ID = "100000000000001"
WEBHOOK_TIMEOUT_S = 10.0
EVOLUTION_TOKEN_HEADER = "X-Webhook-Token"  # the custom header the gateway accepts from Evolution

SessionName = Literal["WORKING", "STARTING", "SCAN_QR_CODE", "FAILED", "STOPPED"]
AckName = Literal["server", "delivered", "read"]
# The same acks in each provider's words (PROVIDERS.md §1 ack values, §2 status names, §4 statuses).
WAHA_ACKS = {"pending": (0, "PENDING"), "server": (1, "SERVER"), "delivered": (2, "DEVICE"), "read": (3, "READ")}
EVOLUTION_ACKS = {"server": "SERVER_ACK", "delivered": "DELIVERY_ACK", "read": "READ"}
META_ACKS = {"server": "sent", "delivered": "delivered", "read": "read"}
EVOLUTION_STATES = {"WORKING": "open", "STARTING": "connecting"}  # every other status is "close"


@dataclass(frozen=True)
class FakeSent:
    """One message the fake accepted, as the adapter should have described it."""

    provider: Provider
    session: str  # WAHA session, Evolution instance or Meta phone-number id
    provider_message_id: str  # bare WAHA id, Evolution key.id, Meta wamid
    chat_id: str  # canonical, `<digits>@c.us`
    to: str  # digits
    text: str
    at: float  # Unix seconds

    def as_json(self) -> dict[str, Any]:
        return {"provider": self.provider.value, "session": self.session,
                "provider_message_id": self.provider_message_id, "chat_id": self.chat_id, "to": self.to,
                "text": self.text, "at": datetime.fromtimestamp(self.at, UTC).isoformat()}


@dataclass
class Behaviour:
    """What the fake does to the next requests; changed by the control API and reset to the defaults."""

    sessions: dict[str, str]
    acks: tuple[str, ...]
    ack_delay_s: float
    webhook_url: str | None
    latency_s: float = 0.0
    fail_next: int = 0
    fail_status: int = 500
    rate_limit_next: int = 0
    retry_after_s: float = 1.0
    hang_next: int = 0
    hang_s: float = 30.0
    rejected: set[str] = field(default_factory=set)

    def as_json(self) -> dict[str, Any]:
        return {"sessions": self.sessions, "acks": list(self.acks), "ack_delay_s": self.ack_delay_s,
                "webhook_url": self.webhook_url, "latency_s": self.latency_s,
                "fail_next": {"count": self.fail_next, "status": self.fail_status},
                "rate_limit": {"count": self.rate_limit_next, "retry_after_s": self.retry_after_s},
                "hang_next": {"count": self.hang_next, "hang_s": self.hang_s}, "reject": sorted(self.rejected)}


_CONTROL = ConfigDict(extra="forbid")


class FailNext(BaseModel):
    model_config = _CONTROL
    count: int = Field(1, ge=0)
    status: int = Field(500, ge=400, le=599)


class RateLimit(BaseModel):
    model_config = _CONTROL
    count: int = Field(1, ge=0)
    retry_after_s: float = Field(1.0, ge=0)


class HangNext(BaseModel):
    model_config = _CONTROL
    count: int = Field(1, ge=0)
    hang_s: float = Field(30.0, gt=0)


class Control(BaseModel):
    """`POST /_fake/control`: every field is optional; the ones given replace the current setting."""

    model_config = _CONTROL
    latency_s: float | None = Field(None, ge=0)
    fail_next: FailNext | None = None
    rate_limit: RateLimit | None = None
    hang_next: HangNext | None = None
    reject: list[str] | None = None
    sessions: dict[str, SessionName] | None = None
    acks: list[AckName] | None = None
    ack_delay_s: float | None = Field(None, ge=0)
    webhook_url: str | None = None  # "" stops posting acks


class FakeProvider:
    """The fake's state, its aiohttp app and the Python side of its control API."""

    def __init__(self, *, api_key: str | None = None, sessions: Iterable[str] = ("default",),
                 webhook_url: str | None = None, webhook_secret: str | None = None,
                 acks: Sequence[str] = ("server", "delivered"), ack_delay_s: float = 0.5, latency_s: float = 0.0):
        self.api_key = api_key  # X-Api-Key for WAHA, apikey for Evolution, the bearer token for Meta
        self.webhook_secret = webhook_secret
        self._defaults = {"sessions": tuple(sessions), "acks": tuple(acks), "ack_delay_s": ack_delay_s,
                          "webhook_url": webhook_url, "latency_s": latency_s}
        self.behaviour = self._initial_behaviour()
        self.sent: list[FakeSent] = []
        self.url = ""
        self._ack_reached: dict[str, str] = {}
        # Without a webhook to post to, acks only need to be right when asked: (sent at, delay, acks).
        self._ack_plans: dict[str, tuple[float, float, tuple[str, ...]]] = {}
        self._taken = 0
        self._recorded = asyncio.Condition()
        self._closing = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None

    def _initial_behaviour(self) -> Behaviour:
        d = self._defaults
        return Behaviour(sessions={name: "WORKING" for name in d["sessions"]}, acks=d["acks"],
                         ack_delay_s=d["ack_delay_s"], webhook_url=d["webhook_url"], latency_s=d["latency_s"])

    # --- control, from Python ----------------------------------------------------------------

    def fail_next(self, count: int = 1, status: int = 500) -> None:
        self.behaviour.fail_next, self.behaviour.fail_status = count, status

    def rate_limit(self, count: int = 1, retry_after_s: float = 1.0) -> None:
        self.behaviour.rate_limit_next, self.behaviour.retry_after_s = count, retry_after_s

    def hang_next(self, count: int = 1, hang_s: float = 30.0) -> None:
        """Accept and record the next sends, then answer only after `hang_s`: the unknown outcome."""
        self.behaviour.hang_next, self.behaviour.hang_s = count, hang_s

    def reject(self, *recipients: str) -> None:
        """Refuse sends to these numbers for good (`+212…`, digits or chat ids), with the provider's 400."""
        self.behaviour.rejected.update(_recipient(r) for r in recipients)

    def set_session(self, session: str, status: SessionName) -> None:
        self.behaviour.sessions[session] = status

    def disconnect(self, session: str = "default", status: SessionName = "SCAN_QR_CODE") -> None:
        self.set_session(session, status)

    def connect(self, session: str = "default") -> None:
        self.set_session(session, "WORKING")

    def set_latency(self, seconds: float) -> None:
        self.behaviour.latency_s = seconds

    def clear_sent(self) -> int:
        cleared = len(self.sent)
        self.sent.clear()
        self._ack_reached.clear()
        self._ack_plans.clear()
        self._taken = 0
        return cleared

    def reset(self) -> None:
        self.behaviour = self._initial_behaviour()
        self.clear_sent()

    def apply(self, control: Control) -> None:
        if control.latency_s is not None:
            self.set_latency(control.latency_s)
        if control.fail_next is not None:
            self.fail_next(control.fail_next.count, control.fail_next.status)
        if control.rate_limit is not None:
            self.rate_limit(control.rate_limit.count, control.rate_limit.retry_after_s)
        if control.hang_next is not None:
            self.hang_next(control.hang_next.count, control.hang_next.hang_s)
        if control.reject is not None:
            self.behaviour.rejected = {_recipient(r) for r in control.reject}
        for session, status in (control.sessions or {}).items():
            self.set_session(session, status)
        if control.acks is not None:
            self.behaviour.acks = tuple(control.acks)
        if control.ack_delay_s is not None:
            self.behaviour.ack_delay_s = control.ack_delay_s
        if control.webhook_url is not None:
            self.behaviour.webhook_url = control.webhook_url or None

    async def next_sent(self, timeout: float = 10.0) -> FakeSent:
        """The next accepted message not yet returned here, waiting for it up to `timeout`."""
        async with asyncio.timeout(timeout), self._recorded:
            await self._recorded.wait_for(lambda: len(self.sent) > self._taken)
            self._taken += 1
            return self.sent[self._taken - 1]

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT_S))
        # No access log: WAHA's paths carry chat ids, which are phone numbers.
        self._runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, host, port).start()
        except OSError:
            await self.stop()
            raise
        self.url = f"http://{host}:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        self._closing.set()  # hung answers and pending acks end now
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
        if self._http is not None:
            await self._http.close()

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._latency])
        app.add_routes([
            web.post("/api/sendText", self._waha_send_text),
            web.get("/api/sessions/{session}", self._waha_session),
            web.get("/api/{session}/chats/{chat_id}/messages", self._waha_messages),
            web.post("/message/sendText/{instance}", self._evolution_send_text),
            web.get("/instance/connectionState/{instance}", self._evolution_state),
            web.post(r"/{version:v\d+\.\d+}/{phone_number_id}/messages", self._meta_send),
            web.get("/_fake/sent", self._control_sent),
            web.delete("/_fake/sent", self._control_clear),
            web.get("/_fake/control", self._control_get),
            web.post("/_fake/control", self._control_post),
            web.post("/_fake/reset", self._control_reset),
        ])
        return app

    @web.middleware
    async def _latency(self, request: web.Request, handler) -> web.StreamResponse:
        if self.behaviour.latency_s and not request.path.startswith("/_fake/"):
            await self._pause(self.behaviour.latency_s)
        return await handler(request)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), seconds)

    # --- WAHA --------------------------------------------------------------------------------

    async def _waha_send_text(self, request: web.Request) -> web.Response:
        if not self._key_matches(request.headers.get("X-Api-Key")):
            return _waha_error(401, "Unauthorized")
        body = await _json_object(request)
        if body is None:
            return _waha_error(400, "the body must be a JSON object")
        missing = [f"{name} should not be empty" for name in ("chatId", "text") if not _text(body.get(name))]
        if missing:
            return _waha_error(400, missing)
        session = body.get("session") or "default"
        refusal = self._waha_refusal(session)
        if refusal is not None:
            return refusal
        return await self._send(Provider.WAHA, session, parse_jid(body["chatId"]), body["text"])

    async def _waha_session(self, request: web.Request) -> web.Response:
        if not self._key_matches(request.headers.get("X-Api-Key")):
            return _waha_error(401, "Unauthorized")
        session = request.match_info["session"]
        status = self.behaviour.sessions.get(session)
        if status is None:
            return _waha_session_missing(session)
        working = status == "WORKING"
        return web.json_response({
            "name": session, "status": status, "config": {"webhooks": []},
            "me": {"id": f"{ME}@c.us", "pushName": "wabus fake"} if working else None,
            "engine": {"engine": "WEBJS"}, "timestamps": {"activity": int(time.time() * 1000)},
        })

    async def _waha_messages(self, request: web.Request) -> web.Response:
        if not self._key_matches(request.headers.get("X-Api-Key")):
            return _waha_error(401, "Unauthorized")
        session = request.match_info["session"]
        refusal = self._waha_refusal(session)
        if refusal is not None:
            return refusal
        try:
            limit = int(request.query.get("limit", "100"))
        except ValueError:
            return _waha_error(400, ["limit must be an integer number"])
        chat = str(parse_jid(request.match_info["chat_id"]))
        newest_first = [s for s in reversed(self.sent)
                        if (s.provider, s.session, s.chat_id) == (Provider.WAHA, session, chat)][:limit]
        return web.json_response([self._wa_message(s) for s in newest_first])

    def _waha_refusal(self, session: str) -> web.Response | None:
        status = self.behaviour.sessions.get(session)
        if status is None:
            return _waha_session_missing(session)
        if status != "WORKING":
            return web.json_response({
                "error": "Session status is not as expected. Try again later or restart the session",
                "session": session, "status": status, "expected": ["WORKING"],
            }, status=422)
        return None

    def _wa_message(self, sent: FakeSent) -> dict[str, Any]:
        ack, ack_name = WAHA_ACKS[self._ack_of(sent.provider_message_id)]
        return {"id": f"true_{sent.chat_id}_{sent.provider_message_id}", "timestamp": int(sent.at),
                "from": f"{ME}@c.us", "fromMe": True, "source": "api", "to": sent.chat_id, "body": sent.text,
                "hasMedia": False, "ack": ack, "ackName": ack_name, "_data": {}}

    # --- Evolution ---------------------------------------------------------------------------

    async def _evolution_send_text(self, request: web.Request) -> web.Response:
        if not self._key_matches(request.headers.get("apikey")):
            return _evolution_error(401, "Unauthorized")
        instance = request.match_info["instance"]
        body = await _json_object(request)
        if body is None:
            return _evolution_error(400, ["the body must be a JSON object"])
        missing = [f'instance requires property "{name}"' for name in ("number", "text") if not _text(body.get(name))]
        if missing:
            return _evolution_error(400, missing)
        status = self.behaviour.sessions.get(instance)
        if status is None:
            return _evolution_instance_missing(instance)
        if status != "WORKING":
            # What Evolution answers while Baileys' socket is down (evolution-api#2229).
            return _evolution_error(400, ["Error: Connection Closed"])
        return await self._send(Provider.EVOLUTION, instance, parse_jid(_recipient(body["number"])), body["text"])

    async def _evolution_state(self, request: web.Request) -> web.Response:
        if not self._key_matches(request.headers.get("apikey")):
            return _evolution_error(401, "Unauthorized")
        instance = request.match_info["instance"]
        status = self.behaviour.sessions.get(instance)
        if status is None:
            return _evolution_instance_missing(instance)
        return web.json_response({"instance": {"instanceName": instance,
                                               "state": EVOLUTION_STATES.get(status, "close")}})

    # --- Meta --------------------------------------------------------------------------------

    async def _meta_send(self, request: web.Request) -> web.Response:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not self._key_matches(token):
            return _meta_error(401, 190, "Invalid OAuth access token - Cannot parse access token")
        phone_number_id = request.match_info["phone_number_id"]
        if phone_number_id not in self.behaviour.sessions:
            return _meta_error(400, 100, f"Unsupported post request. Object with ID '{phone_number_id}' does not "
                                         "exist, cannot be loaded due to missing permissions, or does not support "
                                         "this operation", subcode=33, type_="GraphMethodException")
        body = await _json_object(request)
        if body is None:
            return _meta_error(400, 100, "(#100) The request body must be a JSON object")
        problem = _meta_problem(body)
        if problem:
            return _meta_error(400, 100, problem)
        # The Cloud API has no linked device: session statuses do not apply to it.
        return await self._send(Provider.META, phone_number_id, parse_jid(_recipient(body["to"])),
                                body["text"]["body"])

    # --- the send path shared by the three -----------------------------------------------------

    async def _send(self, provider: Provider, session: str, chat: Jid, text: str) -> web.Response:
        b = self.behaviour
        if b.rate_limit_next:
            b.rate_limit_next -= 1
            refused = _rate_limited(provider)
            refused.headers["Retry-After"] = str(math.ceil(b.retry_after_s))
            return refused
        if b.fail_next:
            b.fail_next -= 1
            return _failed(provider, b.fail_status)
        if chat.user in b.rejected:
            return _rejected(provider, chat)
        sent = await self._record(provider, session, chat, text)
        if b.hang_next:
            b.hang_next -= 1
            # The message is out; its answer comes only after the client has given up.
            await self._pause(b.hang_s)
        return _accepted(provider, sent)

    async def _record(self, provider: Provider, session: str, chat: Jid, text: str) -> FakeSent:
        sent = FakeSent(provider, session, _new_message_id(provider), str(chat), chat.user, text, time.time())
        async with self._recorded:
            self.sent.append(sent)
            self._recorded.notify_all()
        if log.isEnabledFor(logging.INFO):
            log.info("fake provider accepted a message", extra={"provider": provider.value, "session": session,
                                                                "to": mask_phone(chat.user),
                                                                "provider_message_id": sent.provider_message_id})
        if self.behaviour.webhook_url:
            self._spawn(self._deliver_acks(sent))
        else:
            # Nobody to tell: the acks only move the message along for lookups, worked out when asked.
            self._ack_plans[sent.provider_message_id] = (time.monotonic(), self.behaviour.ack_delay_s,
                                                         tuple(self.behaviour.acks))
        return sent

    def _ack_of(self, message_id: str) -> str:
        """The last ack a message has reached: posted by `_deliver_acks`, or due by its plan."""
        if message_id in self._ack_reached:
            return self._ack_reached[message_id]
        plan = self._ack_plans.get(message_id)
        if plan is None:
            return "pending"
        since, delay, acks = plan
        reached = len(acks) if delay <= 0 else min(len(acks), int((time.monotonic() - since) / delay))
        return acks[reached - 1] if reached else "pending"

    # --- acks --------------------------------------------------------------------------------

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("fake provider ack delivery crashed", exc_info=task.exception())

    async def _deliver_acks(self, sent: FakeSent) -> None:
        for ack in self.behaviour.acks:
            await self._pause(self.behaviour.ack_delay_s)
            if self._closing.is_set():
                return
            self._ack_reached[sent.provider_message_id] = ack
            if self.behaviour.webhook_url:
                await self._post_ack(self.behaviour.webhook_url.replace("{provider}", sent.provider.value), sent, ack)

    async def _post_ack(self, url: str, sent: FakeSent, ack: str) -> None:
        now_ms = int(time.time() * 1000)
        match sent.provider:
            case Provider.WAHA:
                event = waha_ack_event(sent, ack, now_ms)
            case Provider.EVOLUTION:
                event = evolution_ack_event(sent, ack, now_ms, destination=url, server_url=self.url)
            case _:
                event = meta_ack_event(sent, ack, now_ms)
        body = json.dumps(event).encode()
        headers = webhook_headers(sent.provider, body, self.webhook_secret, now_ms)
        assert self._http is not None
        try:
            async with self._http.post(url, data=body, headers=headers) as response:
                if response.status >= 300:
                    log.warning("ack webhook refused", extra={"url": url, "ack": ack, "status": response.status})
        except (aiohttp.ClientError, TimeoutError) as exc:
            # A real provider retries or drops; the fake logs and carries on.
            log.warning("ack webhook failed", extra={"url": url, "ack": ack,
                                                     "error": f"{type(exc).__name__}: {exc}".rstrip(": ")})

    # --- control, over HTTP ------------------------------------------------------------------

    async def _control_sent(self, request: web.Request) -> web.Response:
        return web.json_response({"sent": [{**s.as_json(), "ack": self._ack_of(s.provider_message_id)}
                                           for s in self.sent]})

    async def _control_clear(self, request: web.Request) -> web.Response:
        return web.json_response({"cleared": self.clear_sent()})

    async def _control_get(self, request: web.Request) -> web.Response:
        return web.json_response(self.behaviour.as_json())

    async def _control_post(self, request: web.Request) -> web.Response:
        body = await _json_object(request)
        try:
            control = Control.model_validate(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            return web.json_response({"error": "invalid control", "field": ".".join(map(str, first["loc"])),
                                      "reason": first["msg"]}, status=422)
        self.apply(control)
        return web.json_response(self.behaviour.as_json())

    async def _control_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response(self.behaviour.as_json())

    def _key_matches(self, given: str | None) -> bool:
        if self.api_key is None:
            return True
        return given is not None and hmac.compare_digest(given.encode(), self.api_key.encode())


@contextlib.asynccontextmanager
async def running_fake_provider(*, host: str = "127.0.0.1", port: int = 0,
                                **options: Any) -> AsyncIterator[FakeProvider]:
    """A started fake (port 0: any free port; see `.url`), stopped on exit."""
    fake = FakeProvider(**options)
    await fake.start(host, port)
    try:
        yield fake
    finally:
        await fake.stop()


# --- the providers' answers --------------------------------------------------------------------


def _waha_error(status: int, message: str | list[str]) -> web.Response:
    return web.json_response({"statusCode": status, "message": message, "error": HTTPStatus(status).phrase},
                             status=status)


def _waha_session_missing(session: str) -> web.Response:
    return _waha_error(404, f"We didn't find a session with name '{session}'. Please start it first by using "
                            f"POST /api/sessions/{session}/start request")


def _evolution_error(status: int, message: str | list[Any]) -> web.Response:
    return web.json_response({"status": status, "error": HTTPStatus(status).phrase, "response": {"message": message}},
                             status=status)


def _evolution_instance_missing(instance: str) -> web.Response:
    return _evolution_error(404, [f'The "{instance}" instance does not exist'])


def _meta_error(status: int, code: int, message: str, *, subcode: int | None = None, details: str | None = None,
                type_: str = "OAuthException") -> web.Response:
    error: dict[str, Any] = {"message": message, "type": type_, "code": code}
    if subcode is not None:
        error["error_subcode"] = subcode
    if details is not None:
        error["error_data"] = {"messaging_product": "whatsapp", "details": details}
    error["fbtrace_id"] = base64.urlsafe_b64encode(secrets.token_bytes(15)).decode()
    return web.json_response({"error": error}, status=status)


def _meta_problem(body: dict[str, Any]) -> str | None:
    if body.get("messaging_product") != "whatsapp":
        return "(#100) The parameter messaging_product is required."
    if not _text(body.get("to")):
        return "(#100) The parameter to is required."
    if body.get("type", "text") != "text":
        return f"(#100) The fake provider sends text only, not {body.get('type')!r}"
    text = body.get("text")
    if not isinstance(text, dict) or not _text(text.get("body")):
        return "(#100) The parameter text['body'] is required."
    return None


def _rate_limited(provider: Provider) -> web.Response:
    match provider:
        case Provider.WAHA:
            return _waha_error(429, "Too Many Requests")
        case Provider.EVOLUTION:
            return _evolution_error(429, ["Too Many Requests"])
        case _:
            return _meta_error(429, 130429, "(#130429) Rate limit hit",
                               details="Cloud API message throughput has been reached.")


def _failed(provider: Provider, status: int) -> web.Response:
    match provider:
        case Provider.WAHA:
            return _waha_error(status, "fake provider failure")
        case Provider.EVOLUTION:
            return _evolution_error(status, ["fake provider failure"])
        case _:
            code = 131000 if status >= 500 else 190 if status in (401, 403) else 130429 if status == 429 else 100
            return _meta_error(status, code, f"(#{code}) fake provider failure")


def _rejected(provider: Provider, chat: Jid) -> web.Response:
    match provider:
        case Provider.WAHA:
            return _waha_error(400, f"The number {chat.user} is not registered on WhatsApp")
        case Provider.EVOLUTION:
            return _evolution_error(400, [{"exists": False, "jid": f"{chat.user}@s.whatsapp.net",
                                           "number": chat.user}])
        case _:
            return _meta_error(400, 131026, "(#131026) Message undeliverable",
                               details="Unable to deliver message. The recipient may not be a WhatsApp user.")


def _accepted(provider: Provider, sent: FakeSent) -> web.Response:
    match provider:
        case Provider.WAHA:
            return web.json_response({
                "id": f"true_{sent.chat_id}_{sent.provider_message_id}", "timestamp": int(sent.at),
                "from": f"{ME}@c.us", "fromMe": True, "source": "api", "to": sent.chat_id, "body": sent.text,
                "hasMedia": False, "ack": 1, "ackName": "SERVER", "_data": {},
            }, status=201)
        case Provider.EVOLUTION:
            return web.json_response({
                "key": {"remoteJid": f"{sent.to}@s.whatsapp.net", "fromMe": True, "id": sent.provider_message_id},
                "message": {"extendedTextMessage": {"text": sent.text}},
                "messageTimestamp": str(int(sent.at)), "status": "PENDING",
            }, status=201)
        case _:
            return web.json_response({
                "messaging_product": "whatsapp", "contacts": [{"input": sent.to, "wa_id": sent.to}],
                "messages": [{"id": sent.provider_message_id, "message_status": "accepted"}],
            })


def _new_message_id(provider: Provider) -> str:
    match provider:
        case Provider.WAHA:
            return uuid.uuid4().hex.upper()  # WEBJS ids: 32 hex digits
        case Provider.EVOLUTION:
            return "BAE5" + secrets.token_hex(6).upper()  # Baileys ids
        case _:
            return "wamid." + base64.b64encode(b"FAKE" + secrets.token_bytes(26)).decode()


# --- ack webhooks, as each provider posts them -------------------------------------------------


def waha_ack_event(sent: FakeSent, ack: str, now_ms: int) -> dict[str, Any]:
    """A `message.ack` in WAHA's current envelope (samples waha/envelope.structure.json, message.ack.json)."""
    number, name = WAHA_ACKS[ack]
    return {
        "id": "evt_" + ulid(now_ms).lower(), "timestamp": now_ms, "event": "message.ack", "session": sent.session,
        "metadata": {}, "me": {"id": f"{ME}@c.us", "pushName": "wabus fake"},
        "payload": {"id": f"true_{sent.chat_id}_{sent.provider_message_id}", "from": sent.chat_id,
                    "participant": None, "fromMe": True, "ack": number, "ackName": name, "_data": {}},
        "engine": "WEBJS", "environment": {"version": "fake", "engine": "WEBJS", "tier": "CORE"},
    }


def evolution_ack_event(sent: FakeSent, ack: str, now_ms: int, *, destination: str, server_url: str) -> dict[str, Any]:
    """A `messages.update` (sample evolution/messages.update.json)."""
    return {
        "event": "messages.update", "instance": sent.session,
        "data": {"keyId": sent.provider_message_id, "remoteJid": f"{sent.to}@s.whatsapp.net", "fromMe": True,
                 "participant": None, "status": EVOLUTION_ACKS[ack], "instanceId": sent.session},
        "destination": destination, "date_time": datetime.fromtimestamp(now_ms / 1000, UTC).isoformat(),
        "sender": f"{ME}@s.whatsapp.net", "server_url": server_url, "apikey": None,
    }


def meta_ack_event(sent: FakeSent, ack: str, now_ms: int) -> dict[str, Any]:
    """A `statuses` notification (samples meta/statuses.sent.json, statuses.delivered.json)."""
    status = {"id": sent.provider_message_id, "status": META_ACKS[ack], "timestamp": str(now_ms // 1000),
              "recipient_id": sent.to}
    value = {"messaging_product": "whatsapp",
             "metadata": {"display_phone_number": ME, "phone_number_id": sent.session}, "statuses": [status]}
    return {"object": "whatsapp_business_account",
            "entry": [{"id": WABA_ID, "changes": [{"value": value, "field": "messages"}]}]}


def webhook_headers(provider: Provider, body: bytes, secret: str | None, now_ms: int) -> dict[str, str]:
    """The headers each provider signs or authenticates its webhooks with (PROVIDERS.md)."""
    headers = {"Content-Type": "application/json"}
    match provider:
        case Provider.WAHA:
            headers |= {"User-Agent": "WAHA/fake", "X-Webhook-Request-Id": ulid(now_ms),
                        "X-Webhook-Timestamp": str(now_ms)}
            if secret:
                headers |= {"X-Webhook-Hmac": hmac.new(secret.encode(), body, hashlib.sha512).hexdigest(),
                            "X-Webhook-Hmac-Algorithm": "sha512"}
        case Provider.META:
            if secret:
                headers["X-Hub-Signature-256"] = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        case Provider.EVOLUTION:
            if secret:
                headers[EVOLUTION_TOKEN_HEADER] = secret
    return headers


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def ulid(now_ms: int) -> str:
    """A ULID (48 bits of milliseconds, 80 random), as WAHA's event and request ids are."""
    value = (now_ms << 80) | int.from_bytes(secrets.token_bytes(10), "big")
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


def _recipient(value: str) -> str:
    """The digits of a number or chat id, whichever form it came in."""
    return parse_jid(value.strip().replace(" ", "").lstrip("+")).user


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


async def _json_object(request: web.Request) -> dict[str, Any] | None:
    try:
        body = json.loads(await request.read())
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


# --- command line ------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3000)
    parser.add_argument("--session", dest="sessions", action="append",
                        help="a WAHA session, Evolution instance or Meta phone-number id it knows; repeatable "
                             "(default: default)")
    parser.add_argument("--api-key", default=os.environ.get("WABUS_FAKE_PROVIDER_API_KEY"),
                        help="required X-Api-Key / apikey / bearer token (env WABUS_FAKE_PROVIDER_API_KEY)")
    parser.add_argument("--webhook-url", help="where acks are posted; {provider} becomes waha, evolution or meta, "
                                              "e.g. http://127.0.0.1:8080/webhooks/{provider}/clinic-a")
    parser.add_argument("--webhook-secret", default=os.environ.get("WABUS_FAKE_PROVIDER_WEBHOOK_SECRET"),
                        help="signs WAHA and Meta acks, and is Evolution's X-Webhook-Token "
                             "(env WABUS_FAKE_PROVIDER_WEBHOOK_SECRET)")
    parser.add_argument("--ack-delay-s", type=float, default=1.0, help="pause before each ack (default 1.0)")
    parser.add_argument("--read-acks", action="store_true", help="follow delivered with read")
    parser.add_argument("--latency-s", type=float, default=0.0, help="delay every API answer by this much")


def run(args: argparse.Namespace) -> int:
    configure_logging(os.environ.get("WABUS_LOG_LEVEL", "INFO"))
    try:
        asyncio.run(_serve(args))
    except OSError as exc:
        print(f"fake provider: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


async def _serve(args: argparse.Namespace) -> None:
    acks = ("server", "delivered", "read") if args.read_acks else ("server", "delivered")
    options = {"api_key": args.api_key, "sessions": args.sessions or ["default"], "webhook_url": args.webhook_url,
               "webhook_secret": args.webhook_secret, "acks": acks, "ack_delay_s": args.ack_delay_s,
               "latency_s": args.latency_s}
    async with running_fake_provider(host=args.host, port=args.port, **options) as fake:
        settle_garbage_collector()  # it shares the machine with what it is faking for
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stopping.set)
        acks_to = args.webhook_url or "nowhere (no --webhook-url)"
        print(f"fake provider on {fake.url}: WAHA /api, Evolution /message /instance, Meta /vXX.X; "
              f"control {fake.url}/_fake/; acks to {acks_to}; Ctrl-C stops it", flush=True)
        await stopping.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.notifier.fake_provider",
                                     description="A fake WAHA / Evolution / Meta send API for tests and demos.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
