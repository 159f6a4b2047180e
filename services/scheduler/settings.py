from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class SchedulerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WABUS_SCHEDULER_", frozen=True, extra="ignore")

    port: int = Field(8082, ge=0, le=65535)
