"""A session's gate: in-flight room, token bucket, Retry-After pauses and the circuit breaker."""

from services.notifier.providers import FailureKind, SendFailed, Sent
from services.notifier.sending import SessionGate

SENT = Sent(provider_message_id="m1", chat_id="212600000000@c.us")


def gate(**overrides) -> SessionGate:
    return SessionGate(**{"max_in_flight": 4, "rate_per_s": 0, "burst": 1, "breaker_failures": 3,
                          "breaker_cooldown_s": 10.0, **overrides})


def failing(kind: FailureKind = FailureKind.PROVIDER_ERROR, **kw) -> SendFailed:
    return SendFailed(kind, "boom", **kw)


def test_the_breaker_opens_at_the_threshold_then_lets_one_probe_through():
    g = gate()
    for _ in range(2):
        g.answered(failing(), now=100.0, default_pause_s=1)
    assert g.capacity(100.0) == 4 and g.state == 0
    g.answered(failing(FailureKind.UNREACHABLE), now=100.0, default_pause_s=1)
    assert g.capacity(105.0) == 0 and g.state == 1
    assert g.capacity(110.0) == 1 and g.state == 2  # half-open: one send decides
    assert g.capacity(110.1) == 0
    g.answered(SENT, now=111.0, default_pause_s=1)
    assert g.state == 0 and g.capacity(111.0) == 4


def test_a_failed_probe_opens_it_again_for_a_full_cooldown():
    g = gate(breaker_failures=1)
    g.answered(failing(FailureKind.OUTCOME_UNKNOWN), now=0.0, default_pause_s=1)
    assert g.capacity(10.0) == 1
    g.answered(failing(), now=10.5, default_pause_s=1)
    assert g.state == 1 and g.capacity(20.0) == 0 and g.capacity(20.6) == 1


def test_answers_about_the_message_do_not_trip_it_and_a_rate_limit_pauses():
    g = gate(breaker_failures=1)
    for kind in (FailureKind.INVALID_RECIPIENT, FailureKind.REJECTED, FailureKind.SESSION_NOT_READY):
        g.answered(failing(kind), now=0.0, default_pause_s=1)
    assert g.state == 0
    g.answered(failing(FailureKind.RATE_LIMITED, retry_after_s=3.0), now=0.0, default_pause_s=1)
    assert g.state == 0 and g.capacity(2.9) == 0 and g.capacity(3.0) == 4


def test_the_token_bucket_spends_and_refills():
    g = gate(rate_per_s=2, burst=2, refilled=0.0)
    assert g.capacity(0.0) == 2
    g.took(2)
    assert g.capacity(0.0) == 0 and g.next_token_in() == 0.5
    assert g.capacity(0.5) == 1
