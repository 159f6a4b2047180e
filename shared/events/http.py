"""The HTTP parts every service shares: health, readiness, metrics and error mapping."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError

from .errors import DatabaseUnavailable
from .logs import log_context

log = logging.getLogger(__name__)

CORRELATION_HEADER = "X-Correlation-Id"
RETRY_AFTER_S = 5


class NotFound(Exception):
    """A domain lookup found nothing (or nothing this tenant may see): 404."""


class Conflict(Exception):
    """The request is valid but the current state does not allow it: 409, with what is in the way."""

    def __init__(self, reason: str, **details: object):
        super().__init__(reason)
        self.details = details


def problem(status: int, error: str, **details: object) -> web.Response:
    return web.json_response({"error": error, **details}, status=status)


class Invalid(Exception):
    """Input that passed its model but not a check that needs the database or the clock: 422."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


def _invalid_problem(errors: list[dict[str, object]]) -> web.Response:
    first = errors[0] if errors else {"field": None, "reason": "invalid"}
    return problem(422, "invalid request", field=first["field"], reason=first["reason"], errors=errors)


def validation_problem(exc: ValidationError) -> web.Response:
    return _invalid_problem(
        [{"field": ".".join(str(p) for p in e["loc"]) or None, "reason": e["msg"]} for e in exc.errors()])


def json_value(value: object) -> object:
    """A database value as JSON: ids as strings, times in ISO 8601."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if hasattr(value, "isoformat"):  # datetimes, dates, times
        return value.isoformat()
    return value


def json_row(row) -> dict[str, object]:
    return {k: json_value(v) for k, v in dict(row).items()}


def uuid_or_404(value: str, what: str) -> uuid.UUID:
    """An id from a URL; one that cannot be an id names nothing there is."""
    try:
        return uuid.UUID(value)
    except ValueError:
        raise NotFound(f"no such {what}") from None


@web.middleware
async def error_middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
    """Correlate the request, map domain errors to HTTP, and log the unexpected as 500."""
    correlation_id = request.headers.get(CORRELATION_HEADER) or str(uuid.uuid4())
    with log_context(correlation_id=correlation_id):
        try:
            response = await handler(request)
        except web.HTTPException:
            raise
        except ValidationError as exc:
            response = validation_problem(exc)
        except json.JSONDecodeError as exc:
            response = problem(400, "body is not JSON", reason=str(exc))
        except UnicodeDecodeError as exc:
            response = problem(400, "body is not UTF-8", reason=str(exc))
        except Invalid as exc:
            response = _invalid_problem([{"field": exc.field, "reason": exc.reason}])
        except NotFound as exc:
            response = problem(404, str(exc) or "not found")
        except Conflict as exc:
            response = problem(409, "conflict", reason=str(exc), **exc.details)
        except DatabaseUnavailable:
            # Nothing was kept: the sender should try again shortly.
            response = problem(503, "database unavailable, try again")
            response.headers["Retry-After"] = str(RETRY_AFTER_S)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("request failed", extra={"path": request.path, "method": request.method})
            response = problem(500, "internal error", correlation_id=correlation_id)
        response.headers.setdefault(CORRELATION_HEADER, correlation_id)
        return response


def health_routes(readiness: Callable[[], Awaitable[dict[str, str]]], metrics_text: Callable[[], Awaitable[bytes]]):
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        checks = await readiness()
        ready = all(v == "ok" for v in checks.values())
        return web.json_response({"status": "ready" if ready else "not ready", "checks": checks},
                                 status=200 if ready else 503)

    async def metrics(_: web.Request) -> web.Response:
        body = await metrics_text()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    return [web.get("/healthz", healthz), web.get("/readyz", readyz), web.get("/metrics", metrics)]


def render_metrics(registry) -> bytes:
    return generate_latest(registry)
