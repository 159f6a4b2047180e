"""Is this webhook from the provider? Checked on the raw body, in constant time, before parsing."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

import jwt

from shared.events.catalog import Provider

from .domain import Tenant

# Evolution has no body signature: a custom header configured on the instance carries a token…
EVOLUTION_TOKEN_HEADER = "X-Webhook-Token"
# …or Evolution signs an HS256 JWT with the instance's `jwt_key` and sends it as a bearer token.
_EVOLUTION_JWT_CLAIMS = {"require": ["iat", "exp"]}


class Unauthenticated(Exception):
    """401: the request does not prove it comes from the tenant's provider."""


def verify(tenant: Tenant, headers: Mapping[str, str], body: bytes, *, now_ms: int, replay_window_s: float) -> None:
    if not tenant.webhook_secret:
        return  # a tenant without a secret accepts unsigned webhooks (documented; for local setups)
    secret = tenant.webhook_secret.encode()
    match tenant.provider:
        case Provider.WAHA:
            _verify_waha(secret, headers, body, now_ms=now_ms, replay_window_s=replay_window_s)
        case Provider.META:
            _verify_meta(secret, headers, body)
        case Provider.EVOLUTION:
            _verify_evolution(tenant.webhook_secret, headers)
        case _:
            raise Unauthenticated(f"provider {tenant.provider} does not post webhooks")


def waha_signature(secret: bytes, body: bytes) -> str:
    return hmac.new(secret, body, hashlib.sha512).hexdigest()


def meta_signature(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def _verify_waha(secret: bytes, headers: Mapping[str, str], body: bytes, *, now_ms: int,
                 replay_window_s: float) -> None:
    given = headers.get("X-Webhook-Hmac")
    if not given:
        raise Unauthenticated("missing X-Webhook-Hmac")
    algorithm = headers.get("X-Webhook-Hmac-Algorithm", "sha512").lower()
    if algorithm != "sha512":
        raise Unauthenticated(f"unsupported X-Webhook-Hmac-Algorithm {algorithm!r}")
    if not hmac.compare_digest(given.lower().encode(), waha_signature(secret, body).encode()):
        raise Unauthenticated("X-Webhook-Hmac does not match the body")
    # The HMAC covers only the body, so an old request replayed as it was is caught by its timestamp.
    sent = headers.get("X-Webhook-Timestamp")
    if sent is not None:
        try:
            sent_ms = int(sent)
        except ValueError:
            raise Unauthenticated("X-Webhook-Timestamp is not a number") from None
        if abs(now_ms - sent_ms) > replay_window_s * 1000:
            raise Unauthenticated("X-Webhook-Timestamp is outside the replay window")


def _verify_meta(secret: bytes, headers: Mapping[str, str], body: bytes) -> None:
    given = headers.get("X-Hub-Signature-256")
    if not given:
        raise Unauthenticated("missing X-Hub-Signature-256")
    if not hmac.compare_digest(given.lower().encode(), meta_signature(secret, body).encode()):
        raise Unauthenticated("X-Hub-Signature-256 does not match the body")


def _verify_evolution(secret: str, headers: Mapping[str, str]) -> None:
    token = headers.get(EVOLUTION_TOKEN_HEADER)
    if token is not None:
        if not hmac.compare_digest(token.encode(), secret.encode()):
            raise Unauthenticated(f"{EVOLUTION_TOKEN_HEADER} does not match")
        return
    authorization = headers.get("Authorization", "")
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() != "bearer" or not credentials:
        raise Unauthenticated(f"missing {EVOLUTION_TOKEN_HEADER} or Authorization: Bearer <JWT>")
    try:
        jwt.decode(credentials, secret, algorithms=["HS256"], options=_EVOLUTION_JWT_CLAIMS, leeway=30)
    except jwt.InvalidTokenError as exc:
        raise Unauthenticated(f"invalid JWT: {exc}") from None
