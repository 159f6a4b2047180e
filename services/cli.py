"""The `wabus` command: run the system, migrate, and work the dead-letter store."""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import aio_pika
import asyncpg
import uvloop

from shared.events import auth, db, deadletters, topology
from shared.events.asyncapi import render as render_asyncapi
from shared.events.errors import PublishFailed
from shared.events.metrics import Metrics
from shared.events.migrate import ensure_database, migrate, migration_files
from shared.events.publisher import Publisher
from shared.events.runtime import ServiceSpec, run_service
from shared.events.settings import CommonSettings

from .gateway import app as gateway
from .gateway import cli as gateway_cli
from .gateway.settings import GatewaySettings
from .notifier import app as notifier
from .notifier import cli as notifier_cli
from .notifier.settings import NotifierSettings
from .processor import app as processor
from .processor.settings import ProcessorSettings
from .scheduler import app as scheduler
from .scheduler import cli as scheduler_cli
from .scheduler.settings import SchedulerSettings

BUILDERS: dict[str, Callable[[CommonSettings], ServiceSpec]] = {
    "gateway": lambda common: gateway.build(common, GatewaySettings()),
    "processor": lambda common: processor.build(common, ProcessorSettings()),
    "scheduler": lambda common: scheduler.build(common, SchedulerSettings()),
    "notifier": lambda common: notifier.build(common, NotifierSettings()),
}


def _specs(common: CommonSettings, only: str | None = None) -> list[ServiceSpec]:
    names = [only] if only else list(BUILDERS)
    return [BUILDERS[name](common) for name in names]


# --- migrate / up / run -----------------------------------------------------------------------


async def _migrate(common: CommonSettings, specs: Sequence[ServiceSpec]) -> None:
    """The database and its schemas, then every queue and binding, before any service starts:
    events published early then find the queues of services that start later."""
    if await ensure_database(common.database_url, timeout=common.connect_timeout_s):
        print("created database", _database_name(common.database_url))
    for spec in specs:
        conn = await db.connect(common.database_url, spec.schema, timeout=common.connect_timeout_s)
        try:
            applied = await migrate(conn, spec.schema, migration_files(spec.migrations))
        finally:
            await conn.close()
        print(f"{spec.name}: {'applied ' + ', '.join(applied) if applied else 'up to date'}")
    connection = await aio_pika.connect(common.amqp_url, timeout=common.connect_timeout_s)
    try:
        channel = await connection.channel()
        for spec in specs:
            await topology.declare(channel, spec.name, spec.subscriptions)
    finally:
        await connection.close()
    print("broker topology declared")


def _database_name(dsn: str) -> str:
    return dsn.rsplit("/", 1)[-1].split("?", 1)[0]


def cmd_migrate(args: argparse.Namespace) -> int:
    common = CommonSettings()
    asyncio.run(_migrate(common, _specs(common, args.service)))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    common = CommonSettings()
    # uvloop: the same asyncio, with less overhead per socket event, which a busy service pays on every message.
    uvloop.run(run_service(common, BUILDERS[args.service](common)))
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    """Migrate, start every service as its own process, and stop them all together."""
    common = CommonSettings()
    specs = _specs(common)
    asyncio.run(_migrate(common, specs))
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    children: dict[str, subprocess.Popen] = {}
    for spec in specs:
        children[spec.name] = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "run", spec.name],
            start_new_session=True,  # Ctrl-C reaches only this process, which stops the children in order
        )
        print(f"{spec.name:<10} http://{common.host}:{spec.port}  (/healthz /readyz /metrics)", flush=True)
    print("wabus is up; Ctrl-C stops every service.", flush=True)

    exit_code = 0
    # A service that dies is reported and brings the rest down: nothing restarts silently.
    while not stopping:
        dead = [(name, child) for name, child in children.items() if child.poll() is not None]
        if dead:
            for name, child in dead:
                print(f"{name} exited with status {child.returncode}; stopping the others", file=sys.stderr)
            exit_code = 1
            break
        time.sleep(0.2)
    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for name, child in children.items():
        try:
            child.wait(timeout=common.shutdown_timeout_s + 10)
        except subprocess.TimeoutExpired:
            print(f"{name} did not stop in time; killing it", file=sys.stderr)
            child.kill()
            child.wait()
    print("wabus stopped.", flush=True)
    return exit_code


# --- failed -----------------------------------------------------------------------------------


def _parse_failed_id(value: str, service: str | None) -> tuple[str, int]:
    name, _, number = value.rpartition(":")
    name = name or service or ""
    if name not in BUILDERS or not number.isdigit():
        raise SystemExit(f"wabus: failed event ids look like 'processor:12' (or pass --service): {value!r}")
    return name, int(number)


async def _failed(args: argparse.Namespace) -> int:
    common = CommonSettings()
    specs = _specs(common, getattr(args, "service", None))
    if args.action in ("show", "retry") and args.id:
        name, number = _parse_failed_id(args.id, getattr(args, "service", None))
        specs = _specs(common, name)
    amqp = None
    publisher = None
    if args.action == "retry":
        amqp = await aio_pika.connect(common.amqp_url, timeout=common.connect_timeout_s)
        publisher = await Publisher.open(amqp, service="cli", timeout_s=common.publish_timeout_s,
                                         metrics=Metrics("cli"))
    status = 0
    try:
        for spec in specs:
            conn = await db.connect(common.database_url, spec.schema, timeout=common.connect_timeout_s)
            try:
                status |= await _failed_in(args, spec, conn, publisher)
            finally:
                await conn.close()
    finally:
        if amqp is not None:
            await amqp.close()
    return status


async def _failed_in(args, spec: ServiceSpec, conn, publisher: Publisher | None) -> int:
    if args.action == "list":
        for f in await deadletters.list_failed(conn, include_retried=args.all):
            retried = f" retried {f.retried_at:%Y-%m-%d %H:%M:%S}" if f.retried_at else ""
            print(f"{spec.name}:{f.id}\t{f.failed_at:%Y-%m-%d %H:%M:%S}\t{f.subscription}\t{f.event_type}"
                  f"\ttenant={f.tenant_id}\tattempts={f.attempts}\t{f.reason[:120]}{retried}")
        return 0
    if args.action == "show":
        _, number = _parse_failed_id(args.id, spec.name)
        failed = await deadletters.get_failed(conn, number)
        if failed is None:
            print(f"no failed event {spec.name}:{number}", file=sys.stderr)
            return 1
        shown = {k: v for k, v in failed.__dict__.items() if k != "body"}
        shown["body"] = failed.body.decode(errors="replace")
        print(json.dumps(shown, default=str, indent=2, ensure_ascii=False))
        return 0
    if args.action == "retry":
        assert publisher is not None
        if args.id:
            _, number = _parse_failed_id(args.id, spec.name)
            found = await deadletters.get_failed(conn, number)
            if found is None:
                print(f"no failed event {spec.name}:{number}", file=sys.stderr)
                return 1
            targets = [found]
        else:
            targets = await deadletters.list_failed(conn)
        status = 0
        for failed in targets:
            try:
                await deadletters.retry_failed(conn, publisher, failed)
                print(f"retried {spec.name}:{failed.id} into {failed.subscription}")
            except PublishFailed as exc:
                print(f"could not retry {spec.name}:{failed.id}: {exc}", file=sys.stderr)
                status = 1
        return status
    if args.action == "purge":
        removed = await deadletters.purge(conn, retried_only=args.retried)
        print(f"{spec.name}: purged {removed} failed event(s)")
        return 0
    raise AssertionError(args.action)


def cmd_failed(args: argparse.Namespace) -> int:
    if args.action == "retry" and not (args.id or args.all):
        raise SystemExit("wabus failed retry: give an id or --all")
    return asyncio.run(_failed(args))


# --- asyncapi ---------------------------------------------------------------------------------


def cmd_asyncapi(args: argparse.Namespace) -> int:
    text = render_asyncapi(importlib.metadata.version("wabus"))
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text)
        print(f"wrote {args.output}")
    return 0


# --- keys -------------------------------------------------------------------------------------


async def _keys(args: argparse.Namespace) -> int:
    """Every service checks keys against its own table: write each key to all of them, together."""
    common = CommonSettings()
    specs = _specs(common)
    await _migrate(common, specs)
    conn = await asyncpg.connect(common.database_url, timeout=common.connect_timeout_s)
    try:
        async with conn.transaction():
            return await _keys_in(args, conn, [spec.schema for spec in specs])
    finally:
        await conn.close()


async def _keys_in(args: argparse.Namespace, conn: asyncpg.Connection, schemas: list[str]) -> int:
    if args.action == "add":
        key, key_id, secret_hash = auth.new_key()
        for schema in schemas:
            await conn.execute(f'SET LOCAL search_path TO "{schema}"')
            await auth.add_key(conn, key_id=key_id, secret_hash=secret_hash, tenant_id=args.tenant,
                               role=auth.Role[args.role.upper()], label=args.label)
        print(json.dumps({"key_id": key_id, "tenant": args.tenant, "role": args.role, "api_key": key}, indent=2))
        return 0
    await conn.execute(f'SET LOCAL search_path TO "{schemas[0]}"')
    if args.action == "list":
        for row in await auth.list_keys(conn, args.tenant):
            print(json.dumps({k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in dict(row).items()}))
        return 0
    if args.action == "revoke":
        revoked = False
        for schema in schemas:
            await conn.execute(f'SET LOCAL search_path TO "{schema}"')
            revoked = await auth.revoke_key(conn, args.key_id) or revoked
        if not revoked:
            print(f"no active key {args.key_id!r}", file=sys.stderr)
            return 1
        print(f"revoked {args.key_id}")
        return 0
    raise AssertionError(args.action)


# --- parser -----------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wabus", description="WhatsApp events for clinic queues, inboxes and broadcasts.")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("up", help="create the database if missing, migrate, and run all four services").set_defaults(
        func=cmd_up)
    run = sub.add_parser("run", help="run one service in the foreground")
    run.add_argument("service", choices=list(BUILDERS))
    run.set_defaults(func=cmd_run)
    mig = sub.add_parser("migrate", help="create the database if missing, apply migrations, declare queues")
    mig.add_argument("--service", choices=list(BUILDERS))
    mig.set_defaults(func=cmd_migrate)

    failed = sub.add_parser("failed", help="list, show, retry or purge dead-lettered events")
    actions = failed.add_subparsers(dest="action", required=True)
    ls = actions.add_parser("list", help="failed events not yet retried")
    ls.add_argument("--service", choices=list(BUILDERS))
    ls.add_argument("--all", action="store_true", help="include the ones already retried")
    show = actions.add_parser("show", help="one failed event with its error and attempt history")
    show.add_argument("id", help="service:id, as `failed list` prints it")
    retry = actions.add_parser("retry", help="send failed events back to their queue")
    retry.add_argument("id", nargs="?", help="service:id, as `failed list` prints it")
    retry.add_argument("--all", action="store_true", help="every failed event not yet retried")
    retry.add_argument("--service", choices=list(BUILDERS))
    purge = actions.add_parser("purge", help="delete failed events")
    purge.add_argument("--service", choices=list(BUILDERS))
    purge.add_argument("--retried", action="store_true", help="only the ones already retried")
    for action in (ls, show, retry, purge):
        action.set_defaults(func=cmd_failed)

    asyncapi = sub.add_parser("asyncapi", help="write the AsyncAPI document of every event (docs/asyncapi.json)")
    asyncapi.add_argument("--output", default="docs/asyncapi.json", help="a path, or - for standard output")
    asyncapi.set_defaults(func=cmd_asyncapi)

    keys = sub.add_parser("keys", help="tenant API keys: add (prints the key once), list, revoke")
    key_actions = keys.add_subparsers(dest="action", required=True)
    add = key_actions.add_parser("add", help="a new key for a tenant")
    add.add_argument("--tenant", required=True)
    add.add_argument("--role", required=True, choices=["admin", "staff", "viewer"])
    add.add_argument("--label", help="who or what uses it")
    listed = key_actions.add_parser("list", help="keys, never their secrets")
    listed.add_argument("--tenant")
    revoke = key_actions.add_parser("revoke", help="stop a key from working (within seconds)")
    revoke.add_argument("key_id")
    keys.set_defaults(func=lambda args: asyncio.run(_keys(args)))

    gateway_cli.register(sub, Path(gateway.__file__).parent / "migrations",
                         Path(notifier.__file__).parent / "migrations")
    scheduler_cli.register(sub, Path(scheduler.__file__).parent / "migrations")
    notifier_cli.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
