from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class NotifierSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WABUS_NOTIFIER_", frozen=True, extra="ignore")

    port: int = Field(8083, ge=0, le=65535)
