"""Settings every service shares, read once from `WABUS_*` environment variables."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WABUS_", frozen=True, extra="ignore")

    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    database_url: str = "postgresql://127.0.0.1:5432/wabus"
    host: str = "127.0.0.1"
    log_level: str = "INFO"

    connect_timeout_s: float = Field(10.0, gt=0)
    publish_timeout_s: float = Field(10.0, gt=0)
    reconnect_interval_s: float = Field(2.0, gt=0)
    db_pool_min: int = Field(2, ge=1)
    db_pool_max: int = Field(10, ge=1)
    db_command_timeout_s: float = Field(30.0, gt=0)
    readiness_timeout_s: float = Field(2.0, gt=0)

    outbox_batch_size: int = Field(200, ge=1)
    outbox_poll_interval_s: float = Field(1.0, gt=0)
    # Waits for the database to come back, without spending a delivery's retry attempts.
    unavailable_backoff_s: float = Field(1.0, gt=0)
    shutdown_timeout_s: float = Field(20.0, gt=0)
    leader_poll_interval_s: float = Field(2.0, gt=0)
    # Redeliveries come within minutes; a week of inbox rows is a wide margin.
    inbox_retention_h: float = Field(168.0, gt=0)
    inbox_prune_every_s: float = Field(3600.0, gt=0)
