"""A request's lifetime beyond what its handler controls: its client may go away, its body may
come too slowly, and it has a deadline.

- A request whose client disconnects is cancelled where it stands. Waiting for a model, its
  pieces leave the micro-batcher's queue unrun (serving.batching skips cancelled pieces), so no
  model time goes to an answer nobody will read. /metrics counts it as status 499 (nginx's
  "client closed request").
- A body not fully arrived `body_timeout_s` after the request began is answered 408: a slow
  client cannot hold a connection and its buffers forever. (Headers have their own deadline, in
  serving.server.)
- A request unanswered after `request_timeout_s` is cancelled the same way and answered 503.
  Writes (index items, jobs, reloads) are exempt: once started they run to their end, so that a
  client never hears "timed out" about a change that then happens anyway.

Disconnects are watched once the handler has read the whole body (before that, reading the body
itself notices them); a route that never reads its body (a GET) is not watched, and is cheap.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.errors import send_error

# Paths whose requests change state: they are exempt from the request deadline (see above).
UNTIMED_PREFIXES = ("/admin/", "/jobs", "/indexes/")
CLIENT_CLOSED = 499  # the status /metrics counts a request under when its client went away


class _BodyTooSlow(BaseException):  # not an Exception: no handler on the way out may make it a 400 or a 500
    pass


class _Request:
    """What the middleware knows of one request as it runs. Plain attributes, timers and one task
    rather than anyio's events and cancel scopes: this is per-request work on the event loop, and
    those cost about 50 µs a request where this costs about 15."""

    __slots__ = ("body_read", "receiving", "body_late", "started", "finished", "stopped_for", "gone")

    def __init__(self) -> None:
        self.body_read = False  # the handler has read the whole body
        self.receiving = False  # the handler is waiting for the body
        self.body_late = False  # the body's deadline passed while the handler was not reading it
        self.started = False  # the response has started
        self.finished = False  # the response has been sent whole
        self.stopped_for: str | None = None  # why the middleware cancelled the handler: "client", "deadline" or "body"
        self.gone: asyncio.Event | None = None  # set when the client disconnects, made once the handler waits for it


class RequestLifetimeMiddleware:
    def __init__(self, app: ASGIApp, request_timeout_s: float, body_timeout_s: float) -> None:
        self.app = app
        self.request_timeout_s = request_timeout_s
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        request = _Request()
        watcher: asyncio.Task | None = None

        def stop(reason: str) -> None:
            if request.stopped_for is None:
                request.stopped_for = reason
                handler.cancel()

        def body_deadline_passed() -> None:
            if request.body_read:
                return
            if request.receiving:
                stop("body")
            else:  # a handler that reads its body later finds it late at once
                request.body_late = True

        async def guarded_receive() -> Message:
            nonlocal watcher
            if request.body_read:  # nothing is left to arrive but the disconnect
                request.gone = request.gone or asyncio.Event()
                await request.gone.wait()
                return {"type": "http.disconnect"}
            if request.body_late:
                raise _BodyTooSlow()
            request.receiving = True
            try:
                message = await receive()
            finally:
                request.receiving = False
            if message["type"] == "http.request" and not message.get("more_body", False):
                request.body_read = True
                # from now on the server's next message can only be the disconnect: watch for it
                watcher = loop.create_task(watch_for_disconnect())
            elif message["type"] == "http.disconnect" and request.gone is not None:
                request.gone.set()
            return message

        async def noting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                request.started = True
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                request.finished = True
            await send(message)

        async def watch_for_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            if request.gone is not None:
                request.gone.set()
            if not request.finished:  # the server also says "disconnect" once the answer is sent
                stop("client")

        # The handler runs as a task of its own, which the timers and the watcher cancel: a
        # cancellation of this task (the server shutting down) reaches it too, and is told apart
        # from ours by `stopped_for`. The watcher is started once the body is read (a GET never
        # needs one), and is a plain task rather than a task group, which would wrap the
        # handler's own errors in an ExceptionGroup.
        handler = loop.create_task(self.app(scope, guarded_receive, noting_send))
        timers = [loop.call_later(self.body_timeout_s, body_deadline_passed)]
        if not scope["path"].startswith(UNTIMED_PREFIXES):
            timers.append(loop.call_later(self.request_timeout_s, stop, "deadline"))
        body_too_slow = False
        try:
            await handler
        except _BodyTooSlow:
            body_too_slow = True
        except asyncio.CancelledError:
            if request.stopped_for is None or not handler.cancelled():
                raise  # this task itself was cancelled, not only the handler
        finally:
            for timer in timers:
                timer.cancel()
            if watcher is not None:
                watcher.cancel()
            if not handler.done():  # this task was cancelled while the handler ran: it stops too
                handler.cancel()

        if request.started:
            return
        if body_too_slow or request.stopped_for == "body":
            await send_error(scope, send, 408, "body_timeout",
                             f"the request body did not arrive within {self.body_timeout_s:g} s "
                             "(EMBEDSERVE_BODY_TIMEOUT_S); send it faster or in smaller requests", close=True)
        elif request.stopped_for == "client":
            # The client is gone: nobody reads this, but /metrics sees the status on its way out
            # (the server drops what is sent on a closed connection).
            await send({"type": "http.response.start", "status": CLIENT_CLOSED, "headers": []})
            await send({"type": "http.response.body", "body": b""})
        elif request.stopped_for == "deadline":
            await send_error(scope, send, 503, "timeout",
                             f"the request took longer than {self.request_timeout_s:g} s (EMBEDSERVE_REQUEST_TIMEOUT_S) "
                             "and was stopped; retry it later, or with fewer items")
