"""Admin routes for sites: settings and registered pages (the operator or the site's admin
key; each change is logged in the audit log)."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from services.api import public_schema
from services.api.access import Admin, AdminAuthor
from services.api.deps import Live
from services.api.errors import ApiError
from services.api.json_body import json_object
from services.counter import ids, siteconfig

MAX_PAGES_PER_REGISTRATION = 1000


class SiteSettingsIn(BaseModel):
    """Body of PUT /v1/sites/{site}: every field optional; omitted fields keep their value."""

    model_config = ConfigDict(extra="forbid")

    timezone: str = Field("UTC", max_length=64, description="IANA time zone")
    dedupe_window: Annotated[int, Field(ge=0, le=siteconfig.MAX_DEDUPE_WINDOW_S)] | None = Field(
        None, description="seconds; null: VIEWCOUNTER_DEDUPE_WINDOW"
    )
    max_pages: Annotated[int, Field(ge=0)] | None = Field(
        None, description="distinct pages counted; 0: no bound; null: the service default"
    )
    registered_pages_only: bool = False
    page_patterns: list[str] = Field(
        default_factory=list, max_length=siteconfig.MAX_PATTERNS, description="glob patterns"
    )
    allowed_origins: list[str] = Field(
        default_factory=list, max_length=siteconfig.MAX_ORIGINS, description="empty: any"
    )
    public_top: bool = Field(True, description="publish GET /v1/sites/{site}/top")
    learn_titles: bool = Field(
        False, description="take page titles from hits' `title` (anyone sending hits can set one)"
    )


class PageTitleIn(BaseModel):
    """A page to register, with the title its admin gives it (null: clear the admin title)."""

    model_config = ConfigDict(extra="forbid")

    page: str
    title: str | None = Field(None, max_length=ids.TITLE_MAX_CHARS)


class PagesIn(BaseModel):
    """Body of POST /v1/sites/{site}/pages: page ids, or objects with a page and its title."""

    model_config = ConfigDict(extra="forbid")

    pages: list[str | PageTitleIn] = Field(max_length=MAX_PAGES_PER_REGISTRATION)


router = APIRouter(
    prefix="/v1/sites/{site}",
    dependencies=[Admin],
    tags=["admin"],
    responses=public_schema.error_responses(400, 401, 403, 404, 413, 415, 422, 503),
)


def _body_schema(model: type[BaseModel]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": False,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


def _json(body: object, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


@router.put(
    "",
    openapi_extra=_body_schema(SiteSettingsIn),
    responses={201: {"description": "the site was created"}},
)
async def put_site(site: str, request: Request, live: Live, author: AdminAuthor) -> Response:
    """Create a site or change its settings; answers all of its settings."""
    site = ids.site_id(site)
    raw = await request.body()
    data = json_object(raw) if raw.strip() else {}
    unknown = sorted(set(data) - set(SiteSettingsIn.model_fields))
    if unknown:
        raise ApiError(422, "unknown_field", f"{unknown[0]} is not a site setting", unknown[0])
    if "timezone" in data:
        timezone = data["timezone"]
        if not isinstance(timezone, str) or not timezone or len(timezone) > 64:
            raise ApiError(422, "invalid_field", "timezone must be an IANA name", "timezone")
    config, created = await live.register(site, data, author)
    return _json({"site": site, **config.as_dict(), "created": created}, 201 if created else 200)


@router.get("")
async def get_site(site: str, live: Live) -> Response:
    """A site's settings."""
    site = ids.site_id(site)
    config = await live.site_config(site)
    return _json({"site": site, **config.as_dict()})


@router.post("/pages", openapi_extra=_body_schema(PagesIn))
async def register_pages(site: str, request: Request, live: Live, author: AdminAuthor) -> Response:
    """Register pages (for sites that count only registered pages), and set the titles given
    with them; answers the new pages and how many titles changed."""
    site = ids.site_id(site)
    data = json_object(await request.body())
    pages = data.get("pages")
    if (
        not isinstance(pages, list)
        or not pages
        or len(pages) > MAX_PAGES_PER_REGISTRATION
        or not all(isinstance(p, str | dict) for p in pages)
    ):
        raise ApiError(
            422,
            "invalid_field",
            f"pages must be a list of 1 to {MAX_PAGES_PER_REGISTRATION} page ids or"
            ' {"page", "title"} objects',
            "pages",
        )
    unique: dict[str, None] = {}
    given: dict[str, str | None] = {}  # page -> admin title (None: clear); the last one wins
    for position, entry in enumerate(pages):
        if isinstance(entry, str):
            unique[ids.page_id(entry)] = None
            continue
        page, has_title, title = _page_entry(entry, position)
        unique[page] = None
        if has_title:
            given[page] = title
    new, changed = await live.register_pages(site, list(unique), given, author)
    return _json(
        {"site": site, "registered": new, "known": len(unique) - len(new), "titles_set": changed}
    )


def _page_entry(entry: dict[str, object], position: int) -> tuple[str, bool, str | None]:
    """(page, whether a title was given, the title or None to clear it) of a pages entry;
    errors name the field (`page`, `title`) and say the entry's position."""
    unknown = sorted(set(entry) - {"page", "title"})
    if unknown:
        raise ApiError(
            422, "unknown_field", f"pages[{position}].{unknown[0]} is not a field here", unknown[0]
        )
    if "page" not in entry:
        raise ApiError(422, "missing_field", f"pages[{position}].page is required", "page")
    try:
        page = ids.page_id(entry["page"])
        raw = entry.get("title")
        title = None if raw is None else ids.title(raw)
    except ids.InvalidId as exc:
        raise ApiError(
            422, "invalid_field", f"pages[{position}].{exc.field} {exc.message}", exc.field
        ) from None
    return page, "title" in entry, title
