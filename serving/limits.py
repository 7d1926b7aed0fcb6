"""The limits every request has before any route sees it: its body's size, and how many
requests, and how many bytes of bodies, the server holds at once.

- A body larger than `max_bytes` is refused with 413 from its Content-Length, before a byte of
  it is read, or, when it comes without one (chunked), as soon as the bytes read pass the limit;
  either way the server never holds more than the limit of it.
- The bodies of all requests in progress together may hold at most `max_inflight_bytes`: a
  request that would take the total past it is answered 429 with Retry-After before its body is
  read (or, chunked, as soon as it would). However many clients send at once, the memory their
  bodies take stays bounded; the models' queues (serving.batching) bound the work behind them.
- At most `max_requests` requests are in progress at once; past it a request answers 429 with
  Retry-After at once, without its body being read. This is what keeps an overloaded server fast:
  the work it has accepted is bounded, so the answers it gives come in bounded time (Little's
  law) and the event loop stays free for /healthz. The probes (/healthz, /readyz, /metrics) are
  never refused.

The per-image, per-text and per-request counts are checked by the routes, which know what the
body holds.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.errors import send_error

RETRY_AFTER_S = "1"


class _TooLarge(BaseException):  # not an Exception: no handler on the way out may turn it into a 400 or a 500
    pass


class _OverBudget(BaseException):
    pass


PROBES = ("/healthz", "/readyz", "/metrics")  # never refused for load: orchestrators must see the state


class Inflight:
    """What the requests in progress hold: their number and their bodies' bytes (one event loop: no lock)."""

    def __init__(self, max_requests: int, max_bytes: int) -> None:
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.requests = 0
        self.bytes = 0


class RequestLimitsMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int, inflight: Inflight) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.inflight = inflight

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        declared = int(length) if length is not None and length.isdigit() else None
        if declared is not None and declared > self.max_bytes:
            return await self._too_large(scope, send, declared)
        counted = scope["path"] not in PROBES
        if counted and self.inflight.requests >= self.inflight.max_requests:
            return await send_error(scope, send, 429, "overloaded",
                                    f"the server is serving {self.inflight.requests} requests at once, its limit "
                                    "(EMBEDSERVE_MAX_INFLIGHT_REQUESTS); retry after a moment",
                                    headers={"Retry-After": RETRY_AFTER_S})
        held, seen, started = 0, 0, False  # held: this request's share of inflight.bytes

        def take(size: int) -> None:
            nonlocal held
            if size > held:
                lone = held == 0 and self.inflight.bytes == 0  # always gets in: the budget bounds concurrency, not size
                if not lone and self.inflight.bytes + size - held > self.inflight.max_bytes:
                    raise _OverBudget()
                self.inflight.bytes += size - held
                held = size

        async def counted_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge()
                take(seen)
            return message

        async def noting_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        self.inflight.requests += counted
        try:
            if declared:
                take(declared)
            await self.app(scope, counted_receive, noting_send)
        except _TooLarge:
            if not started:
                await self._too_large(scope, send, seen)
        except _OverBudget:
            if not started:
                await send_error(scope, send, 429, "overloaded",
                                 f"the server is holding {self.inflight.bytes:,} bytes of request bodies (the limit is "
                                 f"{self.inflight.max_bytes:,}, EMBEDSERVE_MAX_INFLIGHT_BYTES); retry after a moment",
                                 headers={"Retry-After": RETRY_AFTER_S}, close=True)
        finally:
            self.inflight.bytes -= held
            self.inflight.requests -= counted

    async def _too_large(self, scope: Scope, send: Send, size: int) -> None:
        await send_error(scope, send, 413, "payload_too_large",
                         f"the request body is {size:,}+ bytes; the limit is {self.max_bytes:,} "
                         "(EMBEDSERVE_MAX_REQUEST_BYTES): send fewer or smaller items per request", close=True)
