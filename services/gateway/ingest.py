"""Durable acceptance: every webhook event is kept, once, with its outgoing event, in one transaction."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from shared.events import outbox
from shared.events.catalog import Direction, WhatsAppMessageReceived
from shared.events.envelope import Envelope, Event
from shared.phones import chat_of_phone, parse_jid

from . import repository
from .domain import Accepted, Tenant


@dataclass(frozen=True)
class Incoming:
    tenant: Tenant
    accepted: Accepted
    received_at: datetime


async def record_webhooks(conn: asyncpg.Connection, items: list[Incoming]) -> list[bool]:
    """Store what is new and queue its event; True per item kept now, False for a repeat.

    Runs outside a transaction (GroupCommit's `transaction=False`) and opens one only where it writes twice.
    """
    lid_phones = await _lid_phones(conn, items)
    first: dict[tuple[str, str, str], Envelope] = {}
    for item in items:
        key = (item.tenant.id, item.tenant.provider.value, item.accepted.dedupe_key)
        if key not in first:  # a repeat inside one batch (concurrent duplicates) is still a repeat
            event = _resolve_lid(item.accepted.event, lid_phones.get(item.tenant.id, {}))
            first[key] = Envelope.new(event, tenant_id=item.tenant.id, occurred_at=item.received_at)
    keys = list(first)
    # Once per LID: an upsert may not touch one row twice (a message and its message.any copy both tell).
    learned = {(i.tenant.id, i.accepted.lid): i.accepted.lid_phone for i in items if i.accepted.lid and i.accepted.lid_phone}
    # Usually one statement, which commits on its own; what a batch teaches about LIDs commits with it.
    async with conn.transaction() if learned else contextlib.nullcontext():
        admitted = await outbox.add_admitted(
            conn, [first[k] for k in keys], repository.INSERT_RECEIVED,
            [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys],
        )
        if learned:
            await conn.execute(repository.REMEMBER_LID_PHONES, [k[0] for k in learned], [k[1] for k in learned],
                               list(learned.values()))
    new = {k for k in keys if first[k].id in admitted}

    results = []
    for item in items:
        key = (item.tenant.id, item.tenant.provider.value, item.accepted.dedupe_key)
        results.append(key in new)
        new.discard(key)  # only the first of several copies counts as new
    return results


async def _lid_phones(conn: asyncpg.Connection, items: list[Incoming]) -> dict[str, dict[str, str]]:
    """Phones already known for the LIDs in this batch, plus those the batch itself reveals."""
    known: dict[str, dict[str, str]] = {}
    wanted: dict[str, set[str]] = {}
    for item in items:
        if item.accepted.lid and item.accepted.lid_phone:
            known.setdefault(item.tenant.id, {})[item.accepted.lid] = item.accepted.lid_phone
        lid = _lid_of(item.accepted.event)
        if lid:
            wanted.setdefault(item.tenant.id, set()).add(lid)
    for tenant_id, lids in wanted.items():
        missing = [lid for lid in lids if lid not in known.get(tenant_id, {})]
        if missing:
            for row in await conn.fetch(repository.FIND_LID_PHONES, tenant_id, missing):
                known.setdefault(tenant_id, {})[row["lid"]] = row["phone"]
    return known


def _lid_of(event: Event) -> str | None:
    if not isinstance(event, WhatsAppMessageReceived):
        return None
    m = event.message
    person = m.participant if m.is_group else m.chat_id
    return person if person and parse_jid(person).is_lid else None


def _resolve_lid(event: Event, phones: dict[str, str]) -> Event:
    """Give a LID sender its phone form, so both copies of one chat land in one conversation."""
    lid = _lid_of(event)
    phone = phones.get(lid) if lid else None
    if phone is None:
        return event
    m = event.message  # type: ignore[attr-defined]
    changes: dict[str, object] = {"sender": phone if m.direction is Direction.INBOUND else m.sender}
    if not m.is_group:
        changes["chat_id"] = chat_of_phone(phone)
    return WhatsAppMessageReceived(message=m.model_copy(update=changes))
