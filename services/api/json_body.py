"""Request bodies that must be one JSON object."""

from __future__ import annotations

import orjson

from services.api.errors import ApiError


def json_object(raw: bytes) -> dict[str, object]:
    """The JSON object in `raw`; 400 when it is not JSON, 422 when it is not an object."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ApiError(400, "invalid_json", "body must be a UTF-8 JSON object", "body") from None
    if not isinstance(data, dict):
        raise ApiError(422, "invalid_field", "body must be a JSON object", "body")
    return data
