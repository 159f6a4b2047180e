from pathlib import Path

from shared.events.jobs import Periodic
from shared.events.runtime import ServiceSpec
from shared.events.settings import CommonSettings
from shared.events.topology import Subscription

from . import api, handlers, jobs
from .queues import Queues
from .settings import SchedulerSettings


def build(common: CommonSettings, own: SchedulerSettings) -> ServiceSpec:
    return ServiceSpec(
        name="scheduler",
        port=own.port,
        schema="scheduler",
        migrations=Path(__file__).parent / "migrations",
        unit_of_work=Queues,
        subscriptions=[
            # Sharded by chat: a patient's "join" and then "leave" are applied in that order.
            Subscription("scheduler.requests", "wabus.processor", ["message.processed"], handlers.answer_patient,
                         shards=own.shards, only=handlers.REQUESTS),
        ],
        routes=api.routes,
        jobs=[
            Periodic("apply_schedules", own.schedule_every_s, jobs.apply_schedules(own.schedule_every_s)),
            Periodic("expire_stale_tickets", own.expire_every_s, jobs.expire_stale_tickets),
            Periodic("recompute_statistics", own.statistics_every_s, jobs.recompute_statistics),
        ],
    )
