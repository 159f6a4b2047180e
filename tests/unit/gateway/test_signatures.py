import time

import jwt
import pytest

from services.gateway.domain import Tenant
from services.gateway.signatures import Unauthenticated, meta_signature, verify, waha_signature
from shared.events.catalog import Provider

NOW_MS = 1_776_000_000_000


def tenant(provider: Provider, secret: str | None = "my-secret-key") -> Tenant:
    return Tenant("clinic-a", provider, "default", secret, None, "MA", "fr")


def test_waha_hmac_matches_the_documented_test_vector():
    body = b'{"event":"message","session":"default","engine":"WEBJS"}'
    assert waha_signature(b"my-secret-key", body) == (
        "208f8a55dde9e05519e898b10b89bf0d0b3b0fdf11fdbf09b6b90476301b98d8"
        "097c462b2b17a6ce93b6b47a136cf2e78a33a63f6752c2c1631777076153fa89"
    )
    verify(tenant(Provider.WAHA), {"X-Webhook-Hmac": waha_signature(b"my-secret-key", body),
                                   "X-Webhook-Hmac-Algorithm": "sha512"}, body, now_ms=NOW_MS, replay_window_s=300)


@pytest.mark.parametrize("headers, reason", [
    ({}, "missing X-Webhook-Hmac"),
    ({"X-Webhook-Hmac": "00" * 64}, "does not match"),
    ({"X-Webhook-Hmac": "x", "X-Webhook-Hmac-Algorithm": "md5"}, "unsupported"),
])
def test_waha_rejects_missing_wrong_and_odd_signatures(headers, reason):
    with pytest.raises(Unauthenticated, match=reason):
        verify(tenant(Provider.WAHA), headers, b"{}", now_ms=NOW_MS, replay_window_s=300)


def test_waha_signature_covers_the_exact_bytes():
    body = b'{"event":"message"}'
    signed = {"X-Webhook-Hmac": waha_signature(b"my-secret-key", body)}
    with pytest.raises(Unauthenticated):
        verify(tenant(Provider.WAHA), signed, body + b" ", now_ms=NOW_MS, replay_window_s=300)


def test_waha_replay_window_on_the_timestamp_header():
    body = b"{}"
    headers = {"X-Webhook-Hmac": waha_signature(b"my-secret-key", body)}
    verify(tenant(Provider.WAHA), {**headers, "X-Webhook-Timestamp": str(NOW_MS - 299_000)}, body,
           now_ms=NOW_MS, replay_window_s=300)
    with pytest.raises(Unauthenticated, match="replay window"):
        verify(tenant(Provider.WAHA), {**headers, "X-Webhook-Timestamp": str(NOW_MS - 301_000)}, body,
               now_ms=NOW_MS, replay_window_s=300)


def test_meta_x_hub_signature_256():
    body = b'{"object":"whatsapp_business_account","entry":[]}'
    verify(tenant(Provider.META), {"X-Hub-Signature-256": meta_signature(b"my-secret-key", body)}, body,
           now_ms=NOW_MS, replay_window_s=300)
    with pytest.raises(Unauthenticated, match="missing"):
        verify(tenant(Provider.META), {}, body, now_ms=NOW_MS, replay_window_s=300)
    with pytest.raises(Unauthenticated, match="does not match"):
        verify(tenant(Provider.META), {"X-Hub-Signature-256": meta_signature(b"other", body)}, body,
               now_ms=NOW_MS, replay_window_s=300)


def test_evolution_token_header_or_its_hs256_jwt():
    key = "an-evolution-jwt-key-of-32-bytes-or-more"
    evolution = tenant(Provider.EVOLUTION, secret=key)
    verify(evolution, {"X-Webhook-Token": key}, b"{}", now_ms=NOW_MS, replay_window_s=300)
    now = int(time.time())
    # What Evolution signs (webhook.controller.ts generateJwtToken).
    token = jwt.encode({"iat": now, "exp": now + 600, "app": "evolution", "action": "webhook"}, key,
                       algorithm="HS256")
    verify(evolution, {"Authorization": f"Bearer {token}"}, b"{}", now_ms=NOW_MS, replay_window_s=300)
    expired = jwt.encode({"iat": now - 1200, "exp": now - 600}, key, algorithm="HS256")
    forged = jwt.encode({"iat": now, "exp": now + 600}, "not-the-key-but-just-as-long-as-the-real-one", algorithm="HS256")
    for headers in ({"X-Webhook-Token": "wrong"}, {"Authorization": f"Bearer {expired}"},
                    {"Authorization": f"Bearer {forged}"}, {}):
        with pytest.raises(Unauthenticated):
            verify(evolution, headers, b"{}", now_ms=NOW_MS, replay_window_s=300)


def test_a_tenant_without_a_secret_accepts_unsigned_webhooks():
    verify(tenant(Provider.WAHA, secret=None), {}, b"{}", now_ms=NOW_MS, replay_window_s=300)
