"""A request-body cap: uvicorn has none, and a public endpoint must not buffer any size."""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.api.errors import ApiError, error_response


class BodyTooLarge(ApiError):
    """The request body is larger than VIEWCOUNTER_MAX_BODY_BYTES."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, "body_too_large", f"request body exceeds {limit} bytes", "body")


class BodyLimit:
    """Refuse bodies over `limit` bytes: by Content-Length up front, else while reading."""

    def __init__(self, app: ASGIApp, limit: int, unlimited: re.Pattern[str] | None = None) -> None:
        self.app = app
        self.limit = limit
        # Paths whose route streams its body and bounds it itself (the CSV import).
        self.unlimited = unlimited

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (self.unlimited and self.unlimited.match(scope["path"])):
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit() or int(value) > self.limit:
                    err = BodyTooLarge(self.limit)
                    await error_response(err.status, err.code, err.message, err.field)(
                        scope, receive, send
                    )
                    return
                break
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, limited, send)
