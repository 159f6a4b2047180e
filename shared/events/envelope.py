"""The one JSON envelope every event travels in (DESIGN.md, Events)."""

from __future__ import annotations

import uuid
import zlib
from datetime import UTC, datetime
from typing import Annotated, ClassVar, Generic, TypeVar

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

TenantId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]


def _in_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


UtcDatetime = Annotated[AwareDatetime, AfterValidator(_in_utc)]


class Event(BaseModel):
    """A fact one service states to the others; `type` doubles as its routing key."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    type: ClassVar[str]
    version: ClassVar[int] = 1

    def shard_key(self) -> str | None:
        """What must stay in order downstream (a chat); None when order does not matter."""
        return None

    def selectors(self) -> dict[str, str]:
        """AMQP headers a subscription can pick this event by (`Subscription.only`), so that the broker
        does not deliver what a consumer would only ignore."""
        return {}


E = TypeVar("E", bound=Event)


class Envelope(BaseModel, Generic[E]):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: uuid.UUID
    type: str
    version: int = Field(ge=1)
    occurred_at: UtcDatetime
    tenant_id: TenantId
    correlation_id: str = Field(min_length=1, max_length=200)
    causation_id: str | None = Field(default=None, max_length=200)
    data: E

    @classmethod
    def new(
        cls,
        event: E,
        *,
        tenant_id: str,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        occurred_at: datetime | None = None,
    ) -> Envelope[E]:
        """Start a chain: without a correlation id the event correlates with itself."""
        event_id = uuid.uuid4()
        return Envelope[type(event)](  # type: ignore[misc]
            id=event_id,
            type=event.type,
            version=event.version,
            occurred_at=occurred_at or datetime.now(UTC),
            tenant_id=tenant_id,
            correlation_id=correlation_id or str(event_id),
            causation_id=causation_id,
            data=event,
        )

    def child(self, event: Event, *, occurred_at: datetime | None = None) -> Envelope:
        """An event caused by this one: same tenant and chain, caused by this id."""
        return Envelope.new(
            event,
            tenant_id=self.tenant_id,
            correlation_id=self.correlation_id,
            causation_id=str(self.id),
            occurred_at=occurred_at,
        )

    def encode(self) -> bytes:
        return self.model_dump_json().encode()

    def headers(self) -> dict[str, str]:
        """AMQP headers derived from the event: its selectors, its shard key and the slot that key hashes to."""
        # An event whose order does not matter still needs a slot, or a sharded queue never gets it.
        key = self.data.shard_key() or f"event:{self.id}"
        scoped = f"{self.tenant_id}:{key}"
        # Strings: the headers exchange compares typed values, and strings compare alike everywhere.
        return {**self.data.selectors(), SHARD_KEY_HEADER: scoped, SHARD_HEADER: str(shard_of(scoped))}


# Not `x-` names: a headers exchange leaves `x-` headers out of matching.
SHARD_KEY_HEADER = "wabus-shard-key"
SHARD_HEADER = "wabus-shard"
SHARD_SLOTS = 64  # fixed: consumers map slots onto however many shard queues they run


def shard_of(key: str) -> int:
    # A stable hash (Python's hash() is salted per process).
    return zlib.crc32(key.encode()) % SHARD_SLOTS
