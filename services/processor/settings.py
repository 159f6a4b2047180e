from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ProcessorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WABUS_PROCESSOR_", frozen=True, extra="ignore")

    port: int = Field(8081, ge=0, le=65535)
    # Chats are spread over this many ordered queues; changing it re-spreads them (drain first).
    shards: int = Field(8, ge=1, le=64)
