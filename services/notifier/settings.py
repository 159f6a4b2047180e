from typing import Self

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.events.catalog import Provider


class NotifierSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WABUS_NOTIFIER_", frozen=True, extra="ignore")

    port: int = Field(8083, ge=0, le=65535)
    shards: int = Field(2, ge=1, le=64)
    # Which provider sends: `log` records and logs each message and sends nothing.
    provider: Provider = Field(Provider.LOG, validation_alias=AliasChoices("WABUS_PROVIDER", "provider"))
    provider_url: str | None = Field(None, validation_alias=AliasChoices("WABUS_PROVIDER_URL", "provider_url"))
    provider_api_key: str | None = Field(None, validation_alias=AliasChoices("WABUS_PROVIDER_API_KEY",
                                                                             "provider_api_key"))
    # Per WhatsApp session. The defaults follow the providers' anti-ban advice: one at a time,
    # about one message a second, short bursts only.
    max_in_flight_per_session: int = Field(1, ge=1, le=1000)
    rate_per_s: float = Field(1.0, ge=0)  # 0: no rate limit
    rate_burst: float = Field(3.0, ge=1)
    send_timeout_s: float = Field(30.0, gt=0)
    max_attempts: int = Field(8, ge=1)
    retry_base_s: float = Field(2.0, gt=0)
    retry_max_s: float = Field(300.0, gt=0)
    breaker_failures: int = Field(5, ge=1)
    breaker_cooldown_s: float = Field(30.0, gt=0)
    # An unanswered send is looked up at the provider this long after it went out.
    reconcile_after_s: float = Field(10.0, ge=0)
    session_poll_s: float = Field(30.0, gt=0)
    # How long POST /v1/broadcasts waits on the provider's session status before deciding without it.
    status_check_timeout_s: float = Field(2.0, gt=0)
    # Worker processes that normalise long recipient lists (0: a thread of this process does it).
    phone_workers: int = Field(2, ge=0, le=16)
    claim_batch: int = Field(100, ge=1)
    idle_poll_s: float = Field(1.0, gt=0)
    duplicate_window_s: float = Field(300.0, ge=0)
    # An Idempotency-Key still without an answer after this long belongs to a request that died: a retry
    # with the same body takes it over. Well above what a live request can take (each statement is cut at
    # WABUS_DB_COMMAND_TIMEOUT_S, 30 s; a connection is waited for 10 s; the status check 2 s; a stopping
    # service lets requests finish for 20 s). A live request overtaken anyway answers 409 and changes nothing.
    idempotency_pending_s: float = Field(120.0, gt=0)
    # Then a key is forgotten, answered or not, and may be used again for a new request (Stripe: 24 h).
    idempotency_retention_h: float = Field(24.0, gt=0)
    gauges_every_s: float = Field(15.0, gt=0)

    @model_validator(mode="after")
    def _keys_outlive_their_requests(self) -> Self:
        # A key pruned while its request still runs would turn that request into a 409: keep a wide margin.
        if self.idempotency_retention_h * 3600 <= 2 * self.idempotency_pending_s:
            raise ValueError("idempotency_retention_h must be more than twice idempotency_pending_s")
        return self
