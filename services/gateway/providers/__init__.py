"""One parser per provider: a webhook's JSON in, wabus events out. Pure: no I/O, no clock."""

import functools
from collections.abc import Callable
from datetime import datetime
from typing import Any

from shared.events.catalog import Provider

from ..domain import BadShape, ForeignSession, ParsedWebhook, Tenant
from . import evolution, meta, waha

Parser = Callable[[Any, Tenant, datetime], ParsedWebhook]


def _shape_checked(parse: Parser) -> Parser:
    """Validation names the field where it can; a value the parser still cannot use (a string where
    an object belongs, a timestamp past year 9999) is a 422 as well, never a 500 the provider retries."""

    @functools.wraps(parse)
    def checked(payload: Any, tenant: Tenant, received_at: datetime) -> ParsedWebhook:
        try:
            return parse(payload, tenant, received_at)
        except (BadShape, ForeignSession):
            raise
        except KeyError as exc:
            raise BadShape(str(exc.args[0]) if exc.args else "(body)", "field required") from exc
        except (TypeError, AttributeError, ValueError, OverflowError, OSError) as exc:
            raise BadShape("(body)", f"a value of an unexpected type or range: {exc}") from exc

    return checked


PARSERS: dict[Provider, Parser] = {
    Provider.WAHA: _shape_checked(waha.parse),
    Provider.EVOLUTION: _shape_checked(evolution.parse),
    Provider.META: _shape_checked(meta.parse),
}
