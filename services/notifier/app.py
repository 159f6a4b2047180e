from pathlib import Path

from shared.events.runtime import ServiceSpec
from shared.events.settings import CommonSettings

from .settings import NotifierSettings


def build(common: CommonSettings, own: NotifierSettings) -> ServiceSpec:
    return ServiceSpec(
        name="notifier",
        port=own.port,
        schema="notifier",
        migrations=Path(__file__).parent / "migrations",
    )
