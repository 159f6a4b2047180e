"""Webhook endpoints: check, keep, answer. Nothing here waits on anything but one shared commit."""

from __future__ import annotations

import hmac
import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram

from shared.events.batching import GroupCommit
from shared.events.cache import ReadThrough
from shared.events.catalog import Provider
from shared.events.http import problem

from .domain import BadShape, ForeignSession, Tenant
from .ingest import Incoming
from .providers import PARSERS
from .settings import GatewaySettings
from .signatures import Unauthenticated, verify

log = logging.getLogger(__name__)


class WebhookMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.outcomes = Counter(
            "wabus_webhooks_total", "Webhook events by outcome: accepted, duplicate, ignored; and rejected requests.",
            ["service", "provider", "outcome"], registry=registry,
        )
        self.duration = Histogram(
            "wabus_webhook_duration_seconds", "From request to answer, for answered webhooks.",
            ["service", "provider"], registry=registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
        )


@dataclass
class Gateway:
    settings: GatewaySettings
    tenants: ReadThrough[str, Tenant | None]
    commit: GroupCommit[Incoming, bool]
    metrics: WebhookMetrics


GATEWAY = web.AppKey("gateway", Gateway)


def _provider(request: web.Request) -> Provider:
    name = request.match_info["provider"]
    if name not in PARSERS:
        raise web.HTTPNotFound(text=json.dumps({"error": f"unknown provider {name!r}",
                                                "providers": sorted(PARSERS)}), content_type="application/json")
    return Provider(name)


async def _tenant(request: web.Request, provider: Provider) -> Tenant:
    tenant = await request.app[GATEWAY].tenants.get(request.match_info["tenant"])
    if tenant is None or tenant.provider is not provider:
        raise web.HTTPNotFound(text=json.dumps({"error": "unknown tenant for this provider",
                                                "tenant": request.match_info["tenant"]}),
                               content_type="application/json")
    return tenant


async def receive_webhook(request: web.Request) -> web.Response:
    started = time.perf_counter()
    gateway = request.app[GATEWAY]
    provider = _provider(request)
    response = await _receive(request, gateway, provider)
    if response.status >= 400:
        gateway.metrics.outcomes.labels("gateway", provider.value, f"rejected_{response.status}").inc()
    gateway.metrics.duration.labels("gateway", provider.value).observe(time.perf_counter() - started)
    return response


async def _receive(request: web.Request, gateway: Gateway, provider: Provider) -> web.Response:
    tenant = await _tenant(request, provider)
    if request.content_type != "application/json":
        return problem(415, "unsupported content type", reason="send application/json",
                       content_type=request.content_type)
    limit = gateway.settings.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        return problem(413, "body too large", limit_bytes=limit)
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return problem(413, "body too large", limit_bytes=limit)
    try:
        verify(tenant, request.headers, body, now_ms=int(time.time() * 1000),
               replay_window_s=gateway.settings.replay_window_s)
    except Unauthenticated as exc:
        log.warning("webhook rejected", extra={"tenant_id": tenant.id, "reason": str(exc)})
        return problem(401, "unauthenticated", reason=str(exc))
    try:
        payload = json.loads(body)
    except ValueError as exc:
        return problem(400, "body is not JSON", reason=str(exc))
    received_at = datetime.now(UTC)
    try:
        parsed = PARSERS[provider](payload, tenant, received_at)
    except BadShape as exc:
        return problem(422, "unexpected webhook shape", field=exc.field, reason=exc.reason)
    except ForeignSession as exc:
        # A server-wide webhook pointed at this tenant's URL also carries other tenants' sessions.
        log.warning("webhook for another session", extra={"tenant_id": tenant.id, "field": exc.field})
        return problem(403, "not this tenant's session", field=exc.field, reason=exc.reason)

    kept = await gateway.commit.submit([Incoming(tenant, a, received_at) for a in parsed.events])
    accepted = sum(kept)
    outcomes = gateway.metrics.outcomes
    if accepted:
        outcomes.labels("gateway", provider.value, "accepted").inc(accepted)
    if len(kept) - accepted:
        outcomes.labels("gateway", provider.value, "duplicate").inc(len(kept) - accepted)
    if parsed.ignored:
        outcomes.labels("gateway", provider.value, "ignored").inc(len(parsed.ignored))
    return web.json_response({"accepted": accepted, "duplicates": len(kept) - accepted,
                              "ignored": [{"kind": i.kind, "reason": i.reason} for i in parsed.ignored]})


async def verify_meta_subscription(request: web.Request) -> web.Response:
    """Meta's handshake: echo hub.challenge when hub.verify_token is the tenant's."""
    tenant = await _tenant(request, Provider.META)
    query = request.query
    token = query.get("hub.verify_token", "")
    if query.get("hub.mode") != "subscribe" or not tenant.verify_token \
            or not hmac.compare_digest(token.encode(), tenant.verify_token.encode()):
        return problem(403, "verification failed", reason="hub.mode or hub.verify_token does not match")
    return web.Response(text=query.get("hub.challenge", ""))


routes = [
    web.post("/webhooks/{provider}/{tenant}", receive_webhook),
    web.get("/webhooks/meta/{tenant}", verify_meta_subscription),
]
