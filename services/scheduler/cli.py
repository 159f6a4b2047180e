"""`wabus queues …`: see every department's queue, and run the closing pass by hand."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from shared.events import db, outbox
from shared.events.envelope import Envelope
from shared.events.migrate import ensure_database, migrate, migration_files
from shared.events.settings import CommonSettings

from .queues import Department, Queues

_ACTOR = "cli:auto-close"


def register(sub: argparse._SubParsersAction, migrations: Path) -> None:
    queues = sub.add_parser("queues", help="queue status, and closing queues past their hours by hand")
    actions = queues.add_subparsers(dest="action", required=True)
    status = actions.add_parser("status", help="every department's queue")
    status.add_argument("--tenant")
    close = actions.add_parser(
        "auto-close", help="close every open queue whose hours are over (what the schedule job does at closing time)")
    close.add_argument("--tenant")
    close.add_argument("--department", help="only this department code")
    close.add_argument("--dry-run", action="store_true", help="show what would close, change nothing")
    queues.set_defaults(func=lambda args: asyncio.run(_queues(args, migrations)))


async def _queues(args: argparse.Namespace, migrations: Path) -> int:
    common = CommonSettings()
    await ensure_database(common.database_url, timeout=common.connect_timeout_s)
    conn = await db.connect(common.database_url, "scheduler", timeout=common.connect_timeout_s)
    try:
        await migrate(conn, "scheduler", migration_files(migrations))
        async with conn.transaction():
            queues = Queues(conn)
            departments = [d for d in await queues.departments(args.tenant)
                           if getattr(args, "department", None) in (None, d.code)]
            if getattr(args, "department", None) and not departments:
                print(f"no department {args.department}", file=sys.stderr)
                return 1
            if args.action == "status":
                for dept in departments:
                    print(json.dumps(await _status(queues, dept)))
                return 0
            return await _auto_close(queues, departments, dry_run=args.dry_run)
    finally:
        await conn.close()


async def _status(queues: Queues, dept: Department) -> dict[str, object]:
    status = await queues.status(dept)
    return {"tenant": dept.tenant_id, "department": dept.code, "is_open": status.is_open,
            "since": status.since.isoformat(), "by": status.changed_by, "reason": status.reason,
            "closes_at": status.closes_at.isoformat() if status.closes_at else None,
            "waiting": await queues.waiting(dept), "current_ticket": status.current_ticket}


async def _auto_close(queues: Queues, departments: list[Department], *, dry_run: bool) -> int:
    """Close what is open although its plan says closed, or whose announced closing time passed."""
    for dept in departments:
        status = await queues.status(dept, lock=not dry_run)
        if not status.is_open:
            continue
        plan = (await queues.calendar(dept)).plan_at(queues.now)
        overdue = status.closes_at is not None and status.closes_at <= queues.now
        if plan.is_open and not overdue:
            print(json.dumps({"department": dept.code, "tenant": dept.tenant_id, "action": "stays open",
                              "why": plan.reason}))
            continue
        why = "closing time passed" if overdue else plan.reason
        waiting = await queues.waiting(dept)
        effect = "carried over" if dept.on_close == "carry_over" else "cancelled"
        if dry_run:
            print(json.dumps({"department": dept.code, "tenant": dept.tenant_id, "action": "would close",
                              "why": why, "waiting_tickets": waiting, "tickets_would_be": effect}))
            continue
        events = await queues.close(dept, actor=_ACTOR, reason=why)
        await outbox.add(queues.conn, [Envelope.new(e, tenant_id=dept.tenant_id) for e in events])
        print(json.dumps({"department": dept.code, "tenant": dept.tenant_id, "action": "closed", "why": why,
                          "waiting_tickets": waiting, "tickets": effect}))
    return 0
