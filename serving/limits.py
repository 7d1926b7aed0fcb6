"""The one limit every request has before any route sees it: its body's size.

A body larger than `max_request_bytes` is refused with 413 from its Content-Length, before a
byte of it is read, or, when it comes without one (chunked), as soon as the bytes read pass the
limit; either way the server never holds more than the limit of it. The per-image, per-text and
per-request counts are checked by the routes, which know what the body holds.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.errors import error_body


class _TooLarge(Exception):
    pass


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self._refuse(scope, send, int(length))
        seen, started = 0, False

        async def counted_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge()
            return message

        async def noting_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, noting_send)
        except _TooLarge:
            if not started:
                await self._refuse(scope, send, seen)

    async def _refuse(self, scope: Scope, send: Send, size: int) -> None:
        message = (f"the request body is {size:,}+ bytes; the limit is {self.max_bytes:,} "
                   "(EMBEDSERVE_MAX_REQUEST_BYTES): send fewer or smaller items per request")
        body = json.dumps(error_body(scope["path"], 413, "payload_too_large", message)).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
