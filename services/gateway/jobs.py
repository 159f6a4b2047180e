"""The gateway's periodic work."""

from datetime import timedelta

import asyncpg

from shared.events.jobs import Tick

from . import repository


def prune_received_webhooks(retention_days: float):
    async def prune_received_webhooks(tick: Tick, conn: asyncpg.Connection) -> list:
        """Forget dedupe keys older than any provider still retries."""
        await conn.execute(repository.PRUNE_RECEIVED, tick.at - timedelta(days=retention_days))
        return []

    return prune_received_webhooks
