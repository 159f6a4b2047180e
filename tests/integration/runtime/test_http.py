"""What every service's HTTP side answers: health, readiness, metrics, and errors with reasons."""

import shutil
import uuid

import aio_pika
import aiohttp
import asyncpg
from aiohttp import web
from pydantic import BaseModel, Field

from shared.events import topology
from shared.events.http import NotFound
from shared.events.migrate import ensure_database
from shared.events.runtime import ServiceSpec, serve

from .conftest import consumer_spec


class Patient(BaseModel):
    phone: str = Field(min_length=5)


async def create_patient(request: web.Request) -> web.Response:
    patient = Patient.model_validate(await request.json())
    return web.json_response({"phone": patient.phone}, status=201)


async def missing(request: web.Request) -> web.Response:
    raise NotFound("no such department")


async def broken(request: web.Request) -> web.Response:
    raise RuntimeError("a bug")


ROUTES = [web.post("/patients", create_patient), web.get("/missing", missing), web.get("/broken", broken)]


async def test_errors_answer_with_status_reason_and_field(isolated):
    spec = ServiceSpec(name="scheduler", port=0, schema="scheduler", routes=ROUTES)
    async with serve(isolated.settings(), spec) as running, aiohttp.ClientSession(running.url) as http:
        async with http.post("/patients", json={"phone": "12"}) as r:
            body = await r.json()
            assert r.status == 422 and body["field"] == "phone" and "at least 5" in body["reason"]
        async with http.post("/patients", data=b"{nope", headers={"Content-Type": "application/json"}) as r:
            assert r.status == 400 and (await r.json())["error"] == "body is not JSON"
        async with http.post("/patients", json={"phone": "+212600000000"}) as r:
            assert r.status == 201
        async with http.get("/missing") as r:
            assert r.status == 404 and (await r.json())["error"] == "no such department"
        async with http.get("/broken", headers={"X-Correlation-Id": "req-42"}) as r:
            body = await r.json()
            assert r.status == 500 and body["correlation_id"] == "req-42" and "a bug" not in str(body)
            assert r.headers["X-Correlation-Id"] == "req-42"


async def test_readiness_reports_a_pending_migration(isolated, tmp_path):
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    (migrations / "0001_patients.sql").write_text("CREATE TABLE patients (id int PRIMARY KEY);")
    spec = ServiceSpec(name="scheduler", port=0, schema="scheduler", migrations=migrations)
    async with serve(isolated.settings(), spec) as running, aiohttp.ClientSession(running.url) as http:
        async with http.get("/readyz") as r:
            assert r.status == 200
        # A newer release's migration is on disk but not applied: not ready.
        (migrations / "0002_tickets.sql").write_text("CREATE TABLE tickets (id int);")
        async with http.get("/readyz") as r:
            body = await r.json()
            assert r.status == 503 and body["checks"]["migrations"] == "pending: 0002_tickets"
        async with http.get("/healthz") as r:
            assert r.status == 200
    shutil.rmtree(migrations)


async def test_topology_declaration_is_idempotent(isolated):
    spec = consumer_spec()
    connection = await aio_pika.connect(isolated.amqp_url, timeout=10)
    try:
        for _ in range(2):
            channel = await connection.channel()
            await topology.declare(channel, "processor", spec.subscriptions)
            await channel.close()
        channel = await connection.channel()
        for name in ("processor.turns", "processor.retry.1", "processor.retry.4", "processor.dead"):
            await channel.get_queue(name, ensure=True)
    finally:
        await connection.close()


async def test_a_missing_database_is_created(isolated):
    name = f"wabus_created_{uuid.uuid4().hex[:8]}"
    url = isolated.postgres.url_for(name)
    try:
        assert await ensure_database(url) is True
        assert await ensure_database(url) is False
        conn = await asyncpg.connect(url)
        await conn.close()
    finally:
        await isolated.postgres.drop(name)
