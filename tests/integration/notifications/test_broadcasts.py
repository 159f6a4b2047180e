"""Broadcasts: per-recipient status, idempotency, invalid numbers, opt-outs and a session that drops."""

import asyncio
import uuid

from tests.support import eventually

from .conftest import notifier_with_fake

THREE = ["+212693955201", "0693955202", "212693955203"]


async def _broadcast(n, broadcast_id: str) -> dict:
    return (await n.call("GET", f"/v1/broadcasts/{broadcast_id}", role="viewer"))[1]


async def _finished(n, broadcast_id: str):
    b = await _broadcast(n, broadcast_id)
    return b if b["status"] in ("completed", "partial", "failed") else None


async def test_one_recipient_failing_makes_the_broadcast_partial(isolated):
    async with notifier_with_fake(isolated) as n:
        n.fake.reject("212693955202@c.us")
        status, answer = await n.call("POST", "/v1/broadcasts", {"message": "Clinic closed Friday", "recipients": THREE})
        assert status == 202, answer
        assert (answer["status"], answer["total_recipients"], answer["queued_count"],
                answer["invalid_recipients_count"], answer["idempotent"]) == ("accepted", 3, 3, 0, False)
        assert len(answer["items"]) == 3
        done = await eventually(lambda: _finished(n, answer["broadcast_id"]), what="broadcast finished")
        assert (done["status"], done["sent_count"], done["failed_count"]) == ("partial", 2, 1)
        (failed,) = [i for i in done["items"] if i["status"] == "failed"]
        assert failed["phone"] == "+212693955202" and failed["reason"]
        assert sorted(s.to for s in n.fake.sent) == ["212693955201", "212693955203"]
        status, listed = await n.call("GET", "/v1/notifications", role="viewer", status="failed")
        assert [i["phone"] for i in listed["items"]] == ["+212693955202"]
        status, metrics = await n.call("GET", "/v1/notifications/metrics", role="viewer")
        assert metrics["failed_last_5m"] == 1 and metrics["sent_last_5m"] >= 2 and metrics["active_broadcasts"] == 0


async def test_a_double_post_is_one_broadcast(isolated):
    async with notifier_with_fake(isolated) as n:
        body = {"message": "Vaccination day", "recipients": THREE}
        key = {"Idempotency-Key": str(uuid.uuid4())}
        first, second = await asyncio.gather(n.call("POST", "/v1/broadcasts", body, headers=key),
                                             n.call("POST", "/v1/broadcasts", body, headers=key))
        statuses = sorted([first[0], second[0]])
        assert statuses in ([202, 202], [202, 409]), statuses
        replay = await n.call("POST", "/v1/broadcasts", body, headers=key)
        assert replay[0] == 202 and replay[1]["broadcast_id"] == first[1].get("broadcast_id", second[1].get(
            "broadcast_id"))
        changed = await n.call("POST", "/v1/broadcasts", {**body, "message": "other"}, headers=key)
        assert changed[0] == 422 and changed[1]["field"] == "Idempotency-Key"
        # Without a key: the same message to the same people within minutes is the same broadcast.
        again = await asyncio.gather(*(n.call("POST", "/v1/broadcasts", body) for _ in range(3)))
        assert {a[1]["broadcast_id"] for a in again} == {replay[1]["broadcast_id"]}
        assert all(a[1]["idempotent"] for a in again)
        (count,) = await n.rows("SELECT count(*) FROM broadcasts")
        assert count[0] == 1
        await eventually(lambda: _finished(n, replay[1]["broadcast_id"]), what="finished")
        await asyncio.sleep(0.5)
        assert len(n.fake.sent) == 3


async def test_invalid_numbers_are_refused_with_reasons_and_never_sent(isolated):
    async with notifier_with_fake(isolated) as n:
        status, answer = await n.call("POST", "/v1/broadcasts", {"message": "x", "recipients": ["123", "+2126", "abc"]})
        assert status == 400 and answer["field"] == "recipients" and answer["invalid_recipients_count"] == 3
        assert all(i["reason"] for i in answer["invalid_recipients"])
        status, answer = await n.call("POST", "/v1/broadcasts", {"message": "y", "recipients": [*THREE, "12"]})
        assert status == 202 and answer["queued_count"] == 3 and answer["invalid_recipients_count"] == 1
        assert answer["invalid_recipients"][0]["phone"] == "12"
        status, answer = await n.call("POST", "/v1/broadcasts", {"recipients": THREE})
        assert status == 422
        status, answer = await n.call("POST", "/v1/broadcasts", {"message": "z", "recipients": THREE}, role="viewer")
        assert status == 403


async def test_session_not_connected_is_503_and_a_drop_mid_broadcast_pauses_then_resumes(isolated):
    async with notifier_with_fake(isolated, rate_per_s=20, rate_burst=1, max_in_flight_per_session=1) as n:
        n.fake.disconnect("default")
        status, answer = await n.call("POST", "/v1/broadcasts", {"message": "x", "recipients": THREE})
        assert status == 503 and answer["code"] == "WHATSAPP_NOT_CONNECTED"
        n.fake.connect("default")
        recipients = [f"+2126939553{i:02d}" for i in range(30)]
        status, answer = await n.call("POST", "/v1/broadcasts", {"message": "Reminder", "recipients": recipients})
        assert status == 202
        await eventually(lambda: _at_least(n, 5), what="first sends")
        n.fake.disconnect("default")
        await asyncio.sleep(2.5)
        paused_at = len(n.fake.sent)
        await asyncio.sleep(1.0)
        assert len(n.fake.sent) == paused_at < 30
        n.fake.connect("default")
        done = await eventually(lambda: _finished(n, answer["broadcast_id"]), timeout=30, what="finished")
        assert done["status"] == "completed" and done["sent_count"] == 30
        assert sorted(s.to for s in n.fake.sent) == sorted(r[1:] for r in recipients)


async def _at_least(n, count: int) -> bool:
    return len(n.fake.sent) >= count


async def test_opted_out_patients_are_skipped_and_failed_ones_can_be_retried(isolated):
    async with notifier_with_fake(isolated) as n:
        # As a STOP from this patient records it.
        await n.rows("INSERT INTO opt_outs (tenant_id, phone, at) VALUES ($1, $2, now())", "clinic-waha",
                     "+212693955201")
        n.fake.reject("212693955203@c.us")
        status, answer = await n.call("POST", "/v1/broadcasts", {"message": "Reminder", "recipients": THREE})
        assert status == 202 and answer["opted_out_count"] == 1 and answer["queued_count"] == 2
        done = await eventually(lambda: _finished(n, answer["broadcast_id"]), what="finished")
        assert (done["status"], done["sent_count"], done["failed_count"]) == ("partial", 1, 1)
        assert "212693955201" not in [s.to for s in n.fake.sent]
        n.fake.reset()  # the provider accepts the number again (and forgets what it sent)
        status, retried = await n.call("POST", "/v1/notifications/retry")
        assert status == 200 and retried["retried"] == 1
        done = await eventually(lambda: _completed(n, answer["broadcast_id"]), what="completed after retry")
        assert done["sent_count"] == 2
        assert [s.to for s in n.fake.sent] == ["212693955203"]


async def _completed(n, broadcast_id: str):
    b = await _broadcast(n, broadcast_id)
    return b if b["status"] == "completed" else None
