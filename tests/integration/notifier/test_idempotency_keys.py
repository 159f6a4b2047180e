"""An Idempotency-Key whose first request died: after `idempotency_pending_s` a retry takes it over,
and whatever the timing, one key never gives two broadcasts."""

import asyncio
import hashlib
import json
import uuid
from datetime import UTC, datetime

import asyncpg
import pytest
from pydantic import ValidationError

from services.notifier import app as notifier_app
from services.notifier import jobs
from services.notifier.settings import NotifierSettings
from shared.events.jobs import Tick
from shared.events.settings import CommonSettings
from tests.integration.notifications.conftest import TENANT, notifier_with_fake
from tests.support import eventually

BODY = json.dumps({"message": "Clinic closed Friday", "recipients": ["+212693955201", "0693955202"]}).encode()

# The row a request leaves when it dies between taking the key and answering (killed, or cut from the database).
_DEAD_FIRST_REQUEST = """
INSERT INTO idempotency_keys (tenant_id, key, request_hash, created_at)
VALUES ($1, $2, $3, now() - make_interval(secs => $4))
"""


async def _post(n, key: str, raw: bytes = BODY) -> tuple[int, dict, bool]:
    headers = {"Authorization": f"Bearer {n.keys['staff']}", "Content-Type": "application/json",
               "Idempotency-Key": key}
    async with n.http.post(n.url + "/v1/broadcasts", data=raw, headers=headers) as r:
        return r.status, await r.json(content_type=None), r.headers.get("Idempotent-Replayed") == "true"


async def _dead_first_request(n, key: str, *, age_s: float) -> None:
    await n.rows(_DEAD_FIRST_REQUEST, TENANT, key, hashlib.sha256(BODY).hexdigest(), age_s)


async def _broadcast_ids(n) -> list[str]:
    return [str(r["id"]) for r in await n.rows("SELECT id FROM broadcasts")]


async def test_a_key_left_pending_by_a_dead_request_is_taken_over_by_a_retry(isolated):
    async with notifier_with_fake(isolated, idempotency_pending_s=60) as n:
        key = str(uuid.uuid4())
        await _dead_first_request(n, key, age_s=3600)
        other = json.dumps({"message": "Something else", "recipients": ["+212693955201"]}).encode()
        status, answer, _ = await _post(n, key, other)
        assert status == 422 and answer["field"] == "Idempotency-Key", answer

        status, answer, replayed = await _post(n, key)
        assert status == 202 and not replayed, answer
        assert await _broadcast_ids(n) == [answer["broadcast_id"]]
        (row,) = await n.rows("SELECT status_code FROM idempotency_keys WHERE key = $1", key)
        assert row["status_code"] == 202
        again = await _post(n, key)
        assert again[0] == 202 and again[2] and again[1]["broadcast_id"] == answer["broadcast_id"]


async def test_a_key_pending_for_less_than_the_bound_is_still_in_flight(isolated):
    async with notifier_with_fake(isolated, idempotency_pending_s=60) as n:
        key = str(uuid.uuid4())
        await _dead_first_request(n, key, age_s=30)
        status, answer, _ = await _post(n, key)
        assert status == 409 and answer["field"] == "Idempotency-Key", answer
        assert await _broadcast_ids(n) == []


async def test_concurrent_retries_of_a_dead_request_take_it_over_once(isolated):
    # No fingerprint window: the key alone must keep the retries to one broadcast.
    async with notifier_with_fake(isolated, idempotency_pending_s=60, duplicate_window_s=0) as n:
        key = str(uuid.uuid4())
        await _dead_first_request(n, key, age_s=3600)
        answers = await asyncio.gather(*(_post(n, key) for _ in range(6)))
        statuses = sorted(a[0] for a in answers)
        assert set(statuses) <= {202, 409} and 202 in statuses, answers
        taken_over = [a for a in answers if a[0] == 202 and not a[2]]
        assert len(taken_over) == 1, answers
        (broadcast_id,) = await _broadcast_ids(n)
        assert {a[1]["broadcast_id"] for a in answers if a[0] == 202} == {broadcast_id}


async def test_a_slow_first_request_overtaken_by_a_retry_gives_one_broadcast(isolated):
    # The provider's status check keeps each request about a second (FAST: a 1 s timeout); the key
    # counts as abandoned after 0.3 s, so the retry takes it over while the first is still running.
    async with notifier_with_fake(isolated, idempotency_pending_s=0.3, duplicate_window_s=0) as n:
        n.fake.set_latency(1.2)
        key = str(uuid.uuid4())
        first = asyncio.create_task(_post(n, key))

        async def abandoned():
            return await n.rows("SELECT true FROM idempotency_keys WHERE key = $1 AND status_code IS NULL"
                                " AND created_at < now() - interval '0.3 s'", key)

        await eventually(abandoned, what="the first request's key older than the bound")
        retry = await _post(n, key)
        first = await first
        assert retry[0] == 202 and not retry[2], retry
        assert first[0] == 409 and first[1]["field"] == "Idempotency-Key", first
        assert await _broadcast_ids(n) == [retry[1]["broadcast_id"]]


async def test_a_key_past_its_retention_is_forgotten_and_may_start_a_new_request(isolated):
    async with notifier_with_fake(isolated, idempotency_retention_h=24, duplicate_window_s=0) as n:
        old, recent = str(uuid.uuid4()), str(uuid.uuid4())
        for key in (old, recent):
            status, answer, _ = await _post(n, key)
            assert status == 202, answer
        await n.rows("UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE key = $1", old)

        conn = await asyncpg.connect(n.database_url, server_settings={"search_path": "notifier"})
        try:
            await jobs.prune_idempotency_keys(24)(Tick(datetime.now(UTC), None, 0, 1), conn)
        finally:
            await conn.close()
        assert [r["key"] for r in await n.rows("SELECT key FROM idempotency_keys")] == [recent]

        # The forgotten key with another body is a new request, not a 422; the kept one still refuses it.
        other = json.dumps({"message": "Clinic open Saturday", "recipients": ["+212693955201"]}).encode()
        status, answer, replayed = await _post(n, old, other)
        assert status == 202 and not replayed, answer
        status, answer, _ = await _post(n, recent, other)
        assert status == 422 and answer["field"] == "Idempotency-Key", answer


def test_the_notifier_prunes_its_keys_every_hour():
    spec = notifier_app.build(CommonSettings(), NotifierSettings())
    assert [(j.name, j.every_s) for j in spec.jobs] == [("prune_idempotency_keys", 3600.0)]


def test_keys_must_outlive_the_requests_that_hold_them():
    with pytest.raises(ValidationError, match="idempotency_retention_h"):
        NotifierSettings(idempotency_pending_s=120, idempotency_retention_h=0.05)
