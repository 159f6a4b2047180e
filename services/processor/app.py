from pathlib import Path

from shared.events.runtime import ServiceSpec
from shared.events.settings import CommonSettings

from .settings import ProcessorSettings


def build(common: CommonSettings, own: ProcessorSettings) -> ServiceSpec:
    return ServiceSpec(
        name="processor",
        port=own.port,
        schema="processor",
        migrations=Path(__file__).parent / "migrations",
    )
