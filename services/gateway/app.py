from pathlib import Path

from shared.events.runtime import ServiceSpec
from shared.events.settings import CommonSettings

from .settings import GatewaySettings


def build(common: CommonSettings, own: GatewaySettings) -> ServiceSpec:
    return ServiceSpec(
        name="gateway",
        port=own.port,
        schema="gateway",
        migrations=Path(__file__).parent / "migrations",
    )
