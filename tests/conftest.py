from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

import pytest
import uvloop

from services.cli import BUILDERS
from shared.events.settings import CommonSettings

from .services import Broker, Postgres, ServiceMissing


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def broker():
    try:
        broker = Broker.start()
    except ServiceMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    asyncio.run(broker.sweep())
    yield broker
    asyncio.run(broker.cleanup())


@pytest.fixture(scope="session")
def postgres():
    try:
        pg = Postgres.start()
        asyncio.run(pg.sweep())
        specs = [build(CommonSettings()) for build in BUILDERS.values()]
        asyncio.run(pg.prepare_template([(s.schema, s.migrations) for s in specs]))
    except ServiceMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    yield pg
    asyncio.run(pg.cleanup())


@dataclass
class Isolated:
    """One test's own vhost and database on the real services."""

    broker: Broker
    postgres: Postgres
    vhost: str
    database: str

    @property
    def amqp_url(self) -> str:
        return self.broker.url_for(self.vhost)

    @property
    def database_url(self) -> str:
        return self.postgres.url_for(self.database)

    def settings(self, **overrides) -> CommonSettings:
        fast = dict(amqp_url=self.amqp_url, database_url=self.database_url, outbox_poll_interval_s=0.2,
                    unavailable_backoff_s=0.2, leader_poll_interval_s=0.2, shutdown_timeout_s=10.0,
                    publish_timeout_s=5.0, connect_timeout_s=5.0)
        return CommonSettings(**{**fast, **overrides})

    def env(self) -> dict[str, str]:
        """Environment for a `wabus` subprocess pointed at this test's vhost and database."""
        return {**os.environ, "WABUS_AMQP_URL": self.amqp_url, "WABUS_DATABASE_URL": self.database_url}

    async def cut_connections(self) -> None:
        await self.broker.close_connections(self.vhost)


@pytest.fixture
async def isolated(broker: Broker, postgres: Postgres):
    vhost = await broker.new_vhost()
    database = await postgres.new_database()
    yield Isolated(broker, postgres, vhost, database)
    await postgres.drop(database)
    # Now, not at the end of the run: a broker holding every test's quorum queues slows to a crawl.
    await broker.drop_vhost(vhost)


def pytest_asyncio_loop_factories(config, item):
    # The event loop the services run on (`wabus run`): the tests run on the same one.
    return {"uvloop": uvloop.new_event_loop}


def pytest_report_header(config):
    amqp = os.environ.get("WABUS_AMQP_URL", "testcontainers")
    database = os.environ.get("WABUS_DATABASE_URL", "testcontainers")
    return [f"wabus: broker {amqp}, database {database}, CI={_in_ci()}"]


@pytest.fixture
async def processes():
    """Subprocesses a test starts; whatever still runs at the end is killed, even when the test failed."""
    started: list[asyncio.subprocess.Process] = []
    yield started
    for proc in started:
        if proc.returncode is None:
            # Politely first: `wabus up` stops its own children on SIGTERM.
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), timeout=30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
