"""API errors and the one place that turns any failure into a JSON answer."""

from __future__ import annotations

import logging

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.routing import Match

from services import metrics
from services.counter import ids, siteconfig
from services.counter.errors import CounterUnavailable, PersistenceFailed
from services.counting.live import InvalidTimezone, UnknownSite
from services.counting.top import TopDisabled
from services.db import errors as db_errors

log = logging.getLogger("viewcounter.api")

RETRY_AFTER_S = 1


class ApiError(Exception):
    """An answer other than 2xx, with a code a program can branch on and a field when known."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers or {}


def unknown_site() -> ApiError:
    """The answer to a site that is not registered (and to a key of another site: the same
    bytes, so a key cannot tell whether a site exists)."""
    return ApiError(404, "unknown_site", "no such site; register it first", "site")


def error_response(
    status: int,
    code: str,
    message: str,
    field: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """`{"error": {"code", "message", "field"?}}` with `status`."""
    body: dict[str, str] = {"code": code, "message": message}
    if field is not None:
        body["field"] = field
    return Response(
        orjson.dumps({"error": body}),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def _as_api_error(exc: Exception) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, ids.InvalidId):
        return ApiError(422, "invalid_field", f"{exc.field} {exc.message}", exc.field)
    if isinstance(exc, siteconfig.InvalidSetting):
        return ApiError(422, "invalid_field", str(exc), exc.field)
    if isinstance(exc, InvalidTimezone):
        return ApiError(422, "invalid_field", str(exc), "timezone")
    if isinstance(exc, UnknownSite):
        return unknown_site()
    if isinstance(exc, TopDisabled):
        return ApiError(404, "not_found", "this site does not publish its most-read list")
    if isinstance(exc, PersistenceFailed):
        return ApiError(
            503, "redis_persistence_failed", str(exc), headers={"Retry-After": str(RETRY_AFTER_S)}
        )
    if isinstance(exc, CounterUnavailable):
        return ApiError(
            503, "redis_unavailable", str(exc), headers={"Retry-After": str(RETRY_AFTER_S)}
        )
    if isinstance(exc, ClientDisconnect):
        # The client left while sending its body: nobody reads this answer, nothing counted.
        return ApiError(400, "client_disconnected", "the client went away mid-request", "body")
    if isinstance(exc, db_errors.DatabaseUnavailable):
        return ApiError(
            503, "database_unavailable", "Postgres is unavailable", headers={"Retry-After": "5"}
        )
    log.exception("unhandled error", exc_info=exc)
    return ApiError(500, "internal", "internal error")


def answer(exc: Exception) -> Response:
    """The JSON answer to `exc`; counts Redis and Postgres failures, logs unknown errors."""
    metrics.count_backend_error(exc)
    err = _as_api_error(exc)
    return error_response(err.status, err.code, err.message, err.field, err.headers)


def is_known(exc: Exception) -> bool:
    """True for failures with a known answer (4xx, 503); False for bugs (500)."""
    return isinstance(exc, _KNOWN)


async def _handle(request: Request, exc: Exception) -> Response:
    return answer(exc)


async def _handle_http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = _allowed_methods(request)
    return error_response(
        exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail), headers=headers
    )


def _allowed_methods(request: Request) -> str:
    """Every method some route serves at this path (Starlette names only the first route's)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        route_methods = getattr(route, "methods", None)
        if route_methods and route.matches(request.scope)[0] != Match.NONE:
            methods |= set(route_methods)
    return ", ".join(sorted(methods))


async def _handle_validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    loc = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path")]
    field = ".".join(loc) or None
    return error_response(422, "invalid_field", f"{field or 'request'}: {first['msg']}", field)


# Failures with a known answer. They are registered by class so that Starlette's
# ExceptionMiddleware answers them; a handler for bare `Exception` lives in
# ServerErrorMiddleware, which answers and then re-raises, so the server would log every 4xx
# as "Exception in ASGI application" with a traceback.
_KNOWN: tuple[type[Exception], ...] = (
    ApiError,
    ids.InvalidId,
    siteconfig.InvalidSetting,
    InvalidTimezone,
    UnknownSite,
    TopDisabled,
    CounterUnavailable,
    db_errors.DatabaseUnavailable,
    ClientDisconnect,
)


def install(app: FastAPI) -> None:
    """Route every exception through one mapping to JSON answers."""
    app.add_exception_handler(StarletteHTTPException, _handle_http)
    app.add_exception_handler(RequestValidationError, _handle_validation)
    for known in _KNOWN:
        app.add_exception_handler(known, _handle)
    # Anything else is a bug: a JSON 500, and the server logs the traceback.
    app.add_exception_handler(Exception, _handle)
