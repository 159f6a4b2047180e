"""The real RabbitMQ and PostgreSQL that tests run against, and the isolation each test gets.

URLs come from WABUS_AMQP_URL / WABUS_DATABASE_URL; without them, containers are started with
testcontainers; when neither works the run fails with the reason: a missing service is never a skip.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg

from shared.events.migrate import migrate, migration_files


class ServiceMissing(RuntimeError):
    pass


def _docker_hint(exc: BaseException) -> str:
    return (f"{exc!r}. Set WABUS_AMQP_URL and WABUS_DATABASE_URL to running services "
            "(on this machine: amqp://guest:guest@127.0.0.1:5672/ and postgresql://127.0.0.1:5432/postgres), "
            "or make a Docker engine available for testcontainers.")


def _left_by_dead_run(name: str, prefix: str) -> bool:
    """Test resources carry the pid of the run that made them; a dead pid means nobody will clean up."""
    if not name.startswith(prefix):
        return False
    pid = name[len(prefix):].replace("-", "_").split("_", 1)[0]
    if not pid.isdigit():
        return True  # made before names carried a pid
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@dataclass
class Broker:
    """A RabbitMQ server on which each test gets a vhost of its own."""

    url: str
    ctl: list[str]  # how to run rabbitmqctl against this broker
    containers: list = field(default_factory=list)
    vhosts: list[str] = field(default_factory=list)

    @classmethod
    def start(cls) -> Broker:
        url = os.environ.get("WABUS_AMQP_URL")
        if url:
            ctl = shutil.which("rabbitmqctl")
            if ctl is None:
                raise ServiceMissing(
                    f"WABUS_AMQP_URL is {url!r}, but rabbitmqctl is not on PATH: the tests need it to create "
                    "a vhost per test and to cut connections."
                )
            return cls(url=url, ctl=[ctl])
        try:
            from testcontainers.community.rabbitmq import RabbitMqContainer

            container = RabbitMqContainer("rabbitmq:3.13").start()
        except Exception as exc:  # noqa: BLE001 - any failure here means "no broker to test against"
            raise ServiceMissing("no RabbitMQ: WABUS_AMQP_URL is not set and no container could start: "
                                 + _docker_hint(exc)) from exc
        host, port = container.get_container_host_ip(), container.get_exposed_port(5672)
        wrapped = container.get_wrapped_container()
        return cls(url=f"amqp://guest:guest@{host}:{port}/", ctl=["docker", "exec", wrapped.id, "rabbitmqctl"],
                   containers=[container])

    async def rabbitmqctl(self, *args: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            *self.ctl, *args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {out.decode(errors='replace')}")
        return out.decode(errors="replace")

    async def sweep(self) -> None:
        """Delete vhosts left by test runs that died (their process is gone) before they could clean up."""
        listed = await self.rabbitmqctl("list_vhosts", "--quiet", "--no-table-headers")
        for name in listed.split():
            if _left_by_dead_run(name, "wabus-test-"):
                await self.rabbitmqctl("delete_vhost", name)

    async def new_vhost(self) -> str:
        name = f"wabus-test-{os.getpid()}-{uuid.uuid4().hex[:10]}"
        user = urlsplit(self.url).username or "guest"
        await self.rabbitmqctl("add_vhost", name)
        await self.rabbitmqctl("set_permissions", "-p", name, user, ".*", ".*", ".*")
        self.vhosts.append(name)
        return name

    async def drop_vhost(self, vhost: str) -> None:
        await self.rabbitmqctl("delete_vhost", vhost)
        self.vhosts.remove(vhost)

    def url_for(self, vhost: str) -> str:
        parts = urlsplit(self.url)
        return urlunsplit(parts._replace(path="/" + quote(vhost, safe="")))

    async def close_connections(self, vhost: str) -> None:
        await self.rabbitmqctl("close_all_connections", "--vhost", vhost, "--limit", "1000", "test cuts connections")

    async def cleanup(self) -> None:
        for vhost in self.vhosts:
            try:
                await self.rabbitmqctl("delete_vhost", vhost)
            except RuntimeError:
                pass
        for container in self.containers:
            container.stop()


@dataclass
class Postgres:
    """A PostgreSQL server on which each test gets a database cloned from a migrated template."""

    url: str  # any database on the server; admin work happens in `postgres`
    specs: list = field(default_factory=list)
    containers: list = field(default_factory=list)
    template: str = ""
    databases: list[str] = field(default_factory=list)

    @classmethod
    def start(cls) -> Postgres:
        url = os.environ.get("WABUS_DATABASE_URL")
        if url:
            return cls(url=url)
        try:
            from testcontainers.community.postgres import PostgresContainer

            container = PostgresContainer("postgres:16", driver=None).start()
        except Exception as exc:  # noqa: BLE001
            raise ServiceMissing("no PostgreSQL: WABUS_DATABASE_URL is not set and no container could start: "
                                 + _docker_hint(exc)) from exc
        return cls(url=container.get_connection_url(), containers=[container])

    def url_for(self, database: str) -> str:
        parts = urlsplit(self.url)
        return urlunsplit(parts._replace(path="/" + database))

    async def _admin(self) -> asyncpg.Connection:
        try:
            return await asyncpg.connect(self.url_for("postgres"), timeout=10)
        except (OSError, asyncpg.PostgresError) as exc:
            raise ServiceMissing(f"PostgreSQL at {self.url!r} is not reachable: {exc!r}") from exc

    async def sweep(self) -> None:
        """Drop databases left by test runs that died before they could clean up."""
        admin = await self._admin()
        try:
            for row in await admin.fetch("SELECT datname FROM pg_database WHERE datname LIKE 'wabus\\_t%'"):
                name = row["datname"]
                if _left_by_dead_run(name, "wabus_test_") or _left_by_dead_run(name, "wabus_tpl_"):
                    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

    async def prepare_template(self, schemas: list[tuple[str, object]]) -> None:
        """One migrated database per run; every test clones it, which takes milliseconds."""
        self.template = f"wabus_tpl_{os.getpid()}_{uuid.uuid4().hex[:10]}"
        admin = await self._admin()
        try:
            await admin.execute(f'CREATE DATABASE "{self.template}"')
        finally:
            await admin.close()
        conn = await asyncpg.connect(self.url_for(self.template), timeout=10)
        try:
            for schema, migrations in schemas:
                await migrate(conn, schema, migration_files(migrations))
        finally:
            await conn.close()

    async def new_database(self) -> str:
        name = f"wabus_test_{os.getpid()}_{uuid.uuid4().hex[:10]}"
        admin = await self._admin()
        try:
            await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        finally:
            await admin.close()
        self.databases.append(name)
        return name

    async def drop(self, name: str) -> None:
        admin = await self._admin()
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

    async def cleanup(self) -> None:
        for name in [*self.databases, self.template]:
            if name:
                try:
                    await self.drop(name)
                except (OSError, asyncpg.PostgresError, ServiceMissing):
                    pass
        for container in self.containers:
            container.stop()
