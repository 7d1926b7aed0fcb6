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

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.errors import send_error

# Paths whose requests change state: they are exempt from the request deadline (see above).
UNTIMED_PREFIXES = ("/admin/", "/jobs", "/indexes/")
CLIENT_CLOSED = 499  # the status /metrics counts a request under when its client went away


class _BodyTooSlow(BaseException):  # not an Exception: no handler on the way out may make it a 400 or a 500
    pass


class RequestLifetimeMiddleware:
    def __init__(self, app: ASGIApp, request_timeout_s: float, body_timeout_s: float) -> None:
        self.app = app
        self.request_timeout_s = request_timeout_s
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        body_read = anyio.Event()  # the handler has read the whole body
        client_gone = anyio.Event()
        body_deadline = anyio.current_time() + self.body_timeout_s
        response = {"started": False, "finished": False}

        async def guarded_receive() -> Message:
            if body_read.is_set():  # nothing is left to arrive but the disconnect
                await client_gone.wait()
                return {"type": "http.disconnect"}
            with anyio.move_on_after(max(0.0, body_deadline - anyio.current_time())) as waiting:
                message = await receive()
            if waiting.cancelled_caught:
                raise _BodyTooSlow()
            if message["type"] == "http.request" and not message.get("more_body", False):
                body_read.set()
                # from now on the server's next message can only be the disconnect: watch for it
                watcher.append(asyncio.create_task(watch_for_disconnect()))
            elif message["type"] == "http.disconnect":
                client_gone.set()
            return message

        async def noting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                response["started"] = True
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                response["finished"] = True
            await send(message)

        async def watch_for_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            client_gone.set()
            if not response["finished"]:  # the server also says "disconnect" once the answer is sent
                handler.cancel()

        untimed = scope["path"].startswith(UNTIMED_PREFIXES)
        # The watcher is a plain task, started once the body is read (a GET never needs one),
        # rather than a task group, which would wrap the handler's own errors in an ExceptionGroup.
        watcher: list[asyncio.Task] = []
        handler = anyio.CancelScope()
        with handler:
            try:
                with anyio.move_on_after(None if untimed else self.request_timeout_s) as deadline:
                    try:
                        await self.app(scope, guarded_receive, noting_send)
                    except _BodyTooSlow:
                        if not response["started"]:
                            await send_error(scope, send, 408, "body_timeout",
                                             f"the request body did not arrive within {self.body_timeout_s:g} s "
                                             "(EMBEDSERVE_BODY_TIMEOUT_S); send it faster or in smaller requests",
                                             close=True)
            finally:
                for task in watcher:
                    task.cancel()

        if response["started"]:
            return
        if handler.cancelled_caught:
            # The client is gone: nobody reads this, but /metrics sees the status on its way out
            # (the server drops what is sent on a closed connection).
            await send({"type": "http.response.start", "status": CLIENT_CLOSED, "headers": []})
            await send({"type": "http.response.body", "body": b""})
        elif deadline.cancelled_caught:
            await send_error(scope, send, 503, "timeout",
                             f"the request took longer than {self.request_timeout_s:g} s (EMBEDSERVE_REQUEST_TIMEOUT_S) "
                             "and was stopped; retry it later, or with fewer items")
