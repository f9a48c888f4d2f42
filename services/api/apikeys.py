"""Per-site API keys: `POST/GET /v1/sites/{site}/keys`, `DELETE /v1/sites/{site}/keys/{id}`.
The operator or the site's admin key; every change is logged in the audit log. The secret is
in the creation's answer only (docs/keys-and-tenancy.md)."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from services.api import public_schema
from services.api.access import Admin, AdminAuthor
from services.api.deps import KeyRingDep, Live
from services.api.errors import ApiError
from services.api.json_body import json_object
from services.counter import ids
from services.counting import apikeys
from services.counting.principals import SCOPES

CREATE_FIELDS = frozenset({"scope", "name", "expires_in_days"})

router = APIRouter(
    prefix="/v1/sites/{site}/keys",
    dependencies=[Admin],
    tags=["keys"],
    responses=public_schema.error_responses(400, 401, 403, 404, 413, 415, 422, 429, 503),
)

_CREATE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "scope": {"enum": list(SCOPES)},
                        "name": {"type": "string", "maxLength": apikeys.NAME_MAX_CHARS},
                        "expires_in_days": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": apikeys.MAX_EXPIRES_IN_DAYS,
                        },
                    },
                    "required": ["scope"],
                    "additionalProperties": False,
                }
            }
        },
    }
}


def _json(body: object, status: int = 200) -> Response:
    return Response(
        orjson.dumps(body),
        status_code=status,
        media_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


@router.post(
    "",
    status_code=201,
    openapi_extra=_CREATE_BODY,
    responses={201: {"description": "the key, with its secret (shown this once)"}},
)
async def create_key(
    site: str, request: Request, live: Live, keyring: KeyRingDep, author: AdminAuthor
) -> Response:
    """Make a key of the site with one scope; answers it with its secret, shown only here."""
    site = ids.site_id(site)
    data = json_object(await request.body())
    unknown = sorted(set(data) - CREATE_FIELDS)
    if unknown:
        raise ApiError(422, "unknown_field", f"{unknown[0]} is not a field here", unknown[0])
    if "scope" not in data:
        raise ApiError(422, "missing_field", "scope is required", "scope")
    try:
        scope = apikeys.check_scope(data["scope"])
        name = apikeys.check_name(data.get("name"))
        days = apikeys.check_expires_in_days(data.get("expires_in_days"))
    except apikeys.InvalidKeyRequest as exc:
        raise ApiError(422, "invalid_field", exc.message, exc.field) from None
    await live.site_config(site)  # UnknownSite: 404
    created = await keyring.create(site, scope, name, days, author)
    return _json(created.as_dict(), 201)


@router.get("")
async def list_keys(site: str, live: Live, keyring: KeyRingDep) -> Response:
    """The site's keys, revoked and expired ones too (never a secret), oldest first."""
    site = ids.site_id(site)
    await live.site_config(site)
    return _json({"keys": [key.as_dict() for key in await keyring.of_site(site)]})


@router.delete("/{key_id}", status_code=204, responses={204: {"description": "revoked"}})
async def revoke_key(
    site: str, key_id: str, live: Live, keyring: KeyRingDep, author: AdminAuthor
) -> Response:
    """Revoke one of the site's keys (again: nothing changes); every api process refuses it
    within 5 seconds."""
    site = ids.site_id(site)
    await live.site_config(site)
    if await keyring.revoke(site, key_id, author) is None:
        raise ApiError(404, "unknown_key", "this site has no key with this id", "id")
    return Response(status_code=204)
