"""OpenAPI entries for the public counting routes.

Those routes are plain Starlette endpoints (see hits.py), so FastAPI cannot describe them by
itself; their request and answer shapes are declared here as pydantic models and merged into
the app's OpenAPI document, which /docs shows and the fuzz tests generate requests from.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from services.api.public_models import (
    MODELS,
    SITE_PATTERN,
    BatchIn,
    BatchOut,
    CountsOut,
    ErrorOut,
    HitIn,
    HitOut,
    StatsOut,
    TopOut,
)
from services.counter import ids


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for error statuses, each with the ErrorOut body (for FastAPI)."""
    return {int(k): v for k, v in _errors(*statuses).items()}


def _errors(*statuses: int) -> dict[str, Any]:
    descriptions = {
        400: "malformed body",
        401: "missing or wrong admin token",
        429: "too many requests from this client this minute (see Retry-After)",
        403: "forbidden: origin not allowed for the site, or admin routes disabled",
        404: "unknown site",
        413: "body too large",
        415: "unsupported content type",
        422: "invalid field (named in error.field)",
        503: "Redis unavailable: nothing applied, retry later",
    }
    return {
        str(s): {
            "description": descriptions[s],
            "content": {"application/json": {"schema": _ref(ErrorOut)}},
        }
        for s in statuses
    }


SITE_PARAM = {
    "name": "site",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": SITE_PATTERN, "maxLength": ids.SITE_ID_MAX_CHARS},
}


def _page_param(*, many: bool) -> dict[str, Any]:
    page = {"type": "string", "minLength": 1}
    return {
        "name": "page",
        "in": "query",
        "required": not many,
        "schema": {"type": "array", "items": page, "maxItems": 100} if many else page,
        "style": "form",
        "explode": True,
    }


PATHS: dict[str, Any] = {
    "/v1/sites/{site}/hits": {
        "post": {
            "summary": "Count one page view",
            "operationId": "post_hit",
            "tags": ["counting"],
            "parameters": [SITE_PARAM],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": _ref(HitIn)},
                    "text/plain": {"schema": _ref(HitIn)},
                },
            },
            "responses": {
                "200": {
                    "description": "counted, or why not",
                    "content": {"application/json": {"schema": _ref(HitOut)}},
                },
                **_errors(400, 403, 404, 413, 415, 422, 503),
            },
        }
    },
    "/v1/sites/{site}/hits/batch": {
        "post": {
            "summary": "Count many page views from a trusted collector, once per Idempotency-Key",
            "operationId": "post_batch",
            "tags": ["counting"],
            "parameters": [
                SITE_PARAM,
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string", "pattern": "^[\\x21-\\x7e]{1,128}$"},
                    "description": "a retry with the same key and body counts nothing again",
                },
            ],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref(BatchIn)}},
            },
            "responses": {
                "200": {
                    "description": "outcomes",
                    "content": {"application/json": {"schema": _ref(BatchOut)}},
                },
                **_errors(400, 401, 403, 404, 413, 422, 429, 503),
            },
        }
    },
    "/v1/sites/{site}/hit.gif": {
        "get": {
            "summary": "Count one page view, answering a 1x1 GIF (for <noscript>)",
            "operationId": "pixel_hit",
            "tags": ["counting"],
            "parameters": [SITE_PARAM, _page_param(many=False)],
            "responses": {
                "200": {
                    "description": "a transparent GIF, never cached",
                    "content": {"image/gif": {"schema": {"type": "string", "format": "binary"}}},
                },
                **_errors(403, 404, 422, 503),
            },
        }
    },
    "/v1/sites/{site}/counts": {
        "get": {
            "summary": "Live totals of the site and up to 100 pages, without counting",
            "operationId": "get_counts",
            "tags": ["counting"],
            "parameters": [SITE_PARAM, _page_param(many=True)],
            "responses": {
                "200": {
                    "description": "live totals",
                    "content": {"application/json": {"schema": _ref(CountsOut)}},
                },
                **_errors(403, 404, 422, 503),
            },
        }
    },
    "/v1/sites/{site}/top": {
        "get": {
            "summary": "The most viewed pages of today, this week or this month, live",
            "operationId": "get_top",
            "tags": ["counting"],
            "parameters": [
                SITE_PARAM,
                {
                    "name": "period",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "string", "enum": ["today", "week", "month"]},
                    "description": "default today; days are the site's local days",
                },
                {
                    "name": "limit",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "integer", "minimum": 1, "maximum": 50},
                    "description": "default 10",
                },
            ],
            "responses": {
                "200": {
                    "description": "the list (404 not_found where the site turned it off)",
                    "content": {"application/json": {"schema": _ref(TopOut)}},
                },
                **_errors(403, 404, 422, 503),
            },
        }
    },
    "/v1/sites/{site}/stats": {
        "get": {
            "summary": "The statistics block: online, today, yesterday, this week and month, total",
            "operationId": "get_stats",
            "tags": ["counting"],
            "parameters": [SITE_PARAM],
            "responses": {
                "200": {
                    "description": "the block, live",
                    "content": {"application/json": {"schema": _ref(StatsOut)}},
                },
                **_errors(403, 404, 422, 503),
            },
        }
    },
}


def _optional_query(
    name: str, description: str, max_length: int | None = None, min_length: int = 1
) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string", "minLength": min_length}
    if max_length is not None:
        schema["maxLength"] = max_length
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


PATHS.update(
    {
        "/v1/counter.js": {
            "get": {
                "summary": "The embeddable widget script",
                "operationId": "counter_js",
                "tags": ["website"],
                "parameters": [
                    _optional_query(
                        "v",
                        "version hash: cached for a year when current; any other value: "
                        "ten minutes",
                        min_length=0,
                    )
                ],
                "responses": {
                    "200": {
                        "description": "the script",
                        "content": {"text/javascript": {"schema": {"type": "string"}}},
                    },
                    "304": {"description": "not modified (If-None-Match)"},
                },
            }
        },
        "/v1/sites/{site}/badge.svg": {
            "get": {
                "summary": "An SVG badge of a page's (or the site's) live total; never counts",
                "operationId": "badge",
                "tags": ["website"],
                "parameters": [
                    SITE_PARAM,
                    _optional_query("page", "page id; without it, the site's total"),
                    _optional_query("label", "badge label (default: views)", 40),
                ],
                "responses": {
                    "200": {
                        "description": "the badge",
                        "content": {"image/svg+xml": {"schema": {"type": "string"}}},
                    },
                    **_errors(403, 404, 422, 503),
                },
            }
        },
        "/v1/sites/{site}/stream": {
            "get": {
                "summary": "Server-Sent Events: live totals, at most once a second",
                "operationId": "stream",
                "tags": ["website"],
                "parameters": [SITE_PARAM, _optional_query("page", "page id")],
                "responses": {
                    "200": {
                        "description": "events named `counts`; the stream ends after 15-20 s",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    **_errors(403, 404, 422, 503),
                },
            }
        },
    }
)


def install(app: FastAPI) -> None:
    """Make `app.openapi()` include the public routes next to FastAPI's own."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, routes=app.routes, summary=app.summary
            )
            schema["paths"] = {**PATHS, **schema.get("paths", {})}
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in MODELS:
                definition = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(definition.pop("$defs", {}))
                components[model.__name__] = definition
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
