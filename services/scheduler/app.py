from pathlib import Path

from shared.events.runtime import ServiceSpec
from shared.events.settings import CommonSettings

from .settings import SchedulerSettings


def build(common: CommonSettings, own: SchedulerSettings) -> ServiceSpec:
    return ServiceSpec(
        name="scheduler",
        port=own.port,
        schema="scheduler",
        migrations=Path(__file__).parent / "migrations",
    )
