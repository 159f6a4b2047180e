from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class SchedulerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WABUS_SCHEDULER_", frozen=True, extra="ignore")

    port: int = Field(8082, ge=0, le=65535)
    shards: int = Field(4, ge=1, le=64)
    # How often opening hours are checked: a queue opens or closes at most this late.
    schedule_every_s: float = Field(30.0, gt=0)
    expire_every_s: float = Field(600.0, gt=0)
    statistics_every_s: float = Field(300.0, gt=0)
