from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WABUS_GATEWAY_", frozen=True, extra="ignore")

    port: int = Field(8080, ge=0, le=65535)
