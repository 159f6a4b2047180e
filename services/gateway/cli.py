"""`wabus tenants …`: who may post webhooks, and how their webhooks prove themselves."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

import asyncpg
import phonenumbers

from services.notifier.handlers import add_sender
from shared.events import db
from shared.events.catalog import Provider
from shared.events.migrate import ensure_database, migrate, migration_files
from shared.events.settings import CommonSettings
from shared.phones import InvalidPhone

from . import repository
from .domain import Tenant

_WEBHOOK_PROVIDERS = [p.value for p in (Provider.WAHA, Provider.EVOLUTION, Provider.META)]


def register(sub: argparse._SubParsersAction, migrations, notifier_migrations) -> None:
    tenants = sub.add_parser("tenants", help="add, list, show tenants and rotate their webhook secrets")
    actions = tenants.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="add a tenant; prints its webhook secret once")
    add.add_argument("id", help="lower-case letters, digits, - and _ (e.g. clinic-a)")
    add.add_argument("--provider", required=True, choices=_WEBHOOK_PROVIDERS)
    add.add_argument("--session", required=True, help="WAHA session, Evolution instance or Meta phone-number id")
    add.add_argument("--region", required=True, help="default phone region, ISO 3166 (MA, IL, FR…)")
    add.add_argument("--locale", default="fr", help="default language for messages (fr, en, ar, he)")
    secret = add.add_mutually_exclusive_group()
    secret.add_argument("--secret", help="use this webhook secret instead of generating one")
    secret.add_argument("--no-secret", action="store_true", help="accept unsigned webhooks (local use only)")
    add.add_argument("--verify-token", help="Meta's webhook verify token")
    actions.add_parser("list", help="every tenant")
    show = actions.add_parser("show", help="one tenant (the secret is never printed)")
    show.add_argument("id")
    rotate = actions.add_parser("rotate-secret", help="replace a tenant's webhook secret; prints the new one once")
    rotate.add_argument("id")
    tenants.set_defaults(func=lambda args: asyncio.run(_tenants(args, migrations, notifier_migrations)))


async def _tenants(args: argparse.Namespace, migrations, notifier_migrations) -> int:
    common = CommonSettings()
    await ensure_database(common.database_url, timeout=common.connect_timeout_s)
    conn = await db.connect(common.database_url, "gateway", timeout=common.connect_timeout_s)
    try:
        await migrate(conn, "notifier", migration_files(notifier_migrations))
        await migrate(conn, "gateway", migration_files(migrations))
        return await _run(args, conn)
    finally:
        await conn.close()


def _public(tenant: Tenant) -> dict[str, object]:
    return {"id": tenant.id, "provider": tenant.provider.value, "session": tenant.session,
            "default_region": tenant.default_region, "locale": tenant.locale,
            "signed_webhooks": tenant.webhook_secret is not None,
            "meta_verify_token_set": tenant.verify_token is not None,
            "webhook_path": f"/webhooks/{tenant.provider.value}/{tenant.id}"}


async def _run(args: argparse.Namespace, conn: asyncpg.Connection) -> int:
    if args.action == "add":
        region = args.region.upper()
        try:
            _check_region(region)
        except InvalidPhone as exc:
            print(f"wabus tenants add: --region: {exc.reason}", file=sys.stderr)
            return 2
        secret = None if args.no_secret else (args.secret or repository.new_secret())
        tenant = Tenant(id=args.id, provider=Provider(args.provider), session=args.session, webhook_secret=secret,
                        verify_token=args.verify_token, default_region=region, locale=args.locale)
        try:
            # The notifier keeps its own copy of who sends for the tenant, written together.
            async with conn.transaction():
                await repository.add_tenant(conn, tenant)
                await add_sender(conn, tenant_id=tenant.id, provider=tenant.provider.value, session=tenant.session,
                                 default_region=region, locale=tenant.locale)
        except asyncpg.UniqueViolationError:
            print(f"wabus tenants add: tenant {args.id!r} already exists", file=sys.stderr)
            return 1
        except asyncpg.CheckViolationError as exc:
            print(f"wabus tenants add: invalid value ({exc.constraint_name})", file=sys.stderr)
            return 2
        print(json.dumps({**_public(tenant), "webhook_secret": secret}, indent=2))
        return 0
    if args.action == "list":
        for tenant in await repository.list_tenants(conn):
            print(json.dumps(_public(tenant)))
        return 0
    if args.action == "show":
        tenant = await repository.get_tenant(conn, args.id)
        if tenant is None:
            print(f"no tenant {args.id!r}", file=sys.stderr)
            return 1
        print(json.dumps(_public(tenant), indent=2))
        return 0
    if args.action == "rotate-secret":
        secret = await repository.rotate_secret(conn, args.id)
        if secret is None:
            print(f"no tenant {args.id!r}", file=sys.stderr)
            return 1
        print(json.dumps({"id": args.id, "webhook_secret": secret}, indent=2))
        return 0
    raise AssertionError(args.action)


def _check_region(region: str) -> None:
    if region not in phonenumbers.SUPPORTED_REGIONS:
        raise InvalidPhone(region, "unknown region")
