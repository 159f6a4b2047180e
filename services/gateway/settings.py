from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WABUS_GATEWAY_", frozen=True, extra="ignore")

    port: int = Field(8080, ge=0, le=65535)
    max_body_bytes: int = Field(1024 * 1024, ge=1024)
    # WAHA's X-Webhook-Timestamp must be this close to now.
    replay_window_s: float = Field(300.0, gt=0)
    tenant_cache_s: float = Field(5.0, ge=0)
    # Providers retry for days (Meta up to 7): dedupe keys outlive that.
    received_retention_days: float = Field(14.0, gt=0)
    max_batch: int = Field(1000, ge=1)
    # How far back a reconnecting browser can catch up: the log of followed events keeps this long,
    # and at most this many bytes (a stream keeps the values it was made with; docs/inbound.md).
    stream_retention_h: float = Field(24.0, gt=0)
    stream_max_bytes: int = Field(2_000_000_000, ge=50_000_000)
