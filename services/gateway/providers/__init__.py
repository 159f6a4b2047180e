"""One parser per provider: a webhook's JSON in, wabus events out. Pure: no I/O, no clock."""

from collections.abc import Callable
from datetime import datetime
from typing import Any

from shared.events.catalog import Provider

from ..domain import ParsedWebhook, Tenant
from . import evolution, meta, waha

Parser = Callable[[Any, Tenant, datetime], ParsedWebhook]

PARSERS: dict[Provider, Parser] = {
    Provider.WAHA: waha.parse,
    Provider.EVOLUTION: evolution.parse,
    Provider.META: meta.parse,
}
