"""A request's lifetime on a real server: a client that disconnects never reaches the model, a
body that comes too slowly is a 408, a request past its deadline a 503."""

from __future__ import annotations

import base64
import json
import socket
import threading

import pytest


def embed_request(port: int, blobs: list[bytes], model: str = "slow") -> bytes:
    """The raw bytes of a JSON POST /embed/image."""
    body = json.dumps({"images": [base64.b64encode(b).decode() for b in blobs], "model": model}).encode()
    head = (f"POST /embed/image HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    return head + body


def exchange(port: int, request: bytes, timeout_s: float = 60.0) -> bytes:
    """Send `request` on a new connection and read the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
        s.sendall(request)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


@pytest.fixture
def server(slow_artifacts, start_server):
    # one batch at a time: a second request waits in the queue while the first is in the model
    with start_server(slow_artifacts, max_batch_size=64, body_timeout_s=1, batches_in_flight=1) as server:
        yield server


def test_a_request_whose_client_went_away_never_reaches_the_model(server, make_png):
    images = [make_png(i, size=(8, 8)) for i in range(64)]
    busy = threading.Thread(target=lambda: answers.append(exchange(server.port, embed_request(server.port, images))))
    answers: list[bytes] = []
    busy.start()  # 64 rows: the model is busy with them for a second or more
    server.wait_for(lambda: server.metric("embedserve_batch_size_count", model="slow") == 1, "the first batch to start")

    gone = socket.create_connection(("127.0.0.1", server.port))
    gone.sendall(embed_request(server.port, images[:8]))  # queued behind the running batch...
    server.wait_for(lambda: server.metric("embedserve_queued_rows", model="slow") == 72, "the second request to queue")
    gone.close()  # ...and its client leaves before the model is free
    server.wait_for(lambda: server.metric("embedserve_queued_rows", model="slow") == 64, "the request to be dropped")

    busy.join(timeout=60)
    assert status_of(answers[0]) == 200
    server.wait_for(lambda: server.metric("embedserve_queued_rows", model="slow") == 0, "the queue to empty")
    assert server.metric("embedserve_batch_size_count", model="slow") == 1  # one model call...
    assert server.metric("embedserve_batch_size_sum", model="slow") == 64  # ...of the first request's rows only
    assert server.metric("embedserve_requests_total", method="POST", route="/embed/image", status="499") == 1


def test_a_body_that_comes_too_slowly_is_a_408(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(b"POST /embed/image HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 1000\r\n\r\n{\"images\": [")  # and then nothing more
        answer = b"".join(iter(lambda: s.recv(65536), b""))  # until the server closes the connection
    assert status_of(answer) == 408
    assert b"EMBEDSERVE_BODY_TIMEOUT_S" in answer


def test_a_request_past_its_deadline_is_a_503(slow_artifacts, start_server, make_png):
    images = [make_png(i, size=(8, 8)) for i in range(64)]
    with start_server(slow_artifacts, max_batch_size=64, request_timeout_s=0.2) as server:
        answer = exchange(server.port, embed_request(server.port, images))
        assert status_of(answer) == 503, answer[:500]
        assert b"EMBEDSERVE_REQUEST_TIMEOUT_S" in answer
        assert exchange(server.port, embed_request(server.port, images[:1])).startswith(b"HTTP/1.1 ")  # still serving


def _call(middleware, scope_path: str = "/embed/image", body_after_s: float = 0.0) -> list[dict]:
    """Run `middleware` on one request in-process: the body arrives `body_after_s` after it is
    asked for; returns what was sent."""
    import asyncio

    sent: list[dict] = []

    async def scenario():
        delivered = False

        async def receive():
            nonlocal delivered
            if delivered:
                await asyncio.sleep(3600)  # no disconnect
            await asyncio.sleep(body_after_s)
            delivered = True
            return {"type": "http.request", "body": b"{}", "more_body": False}

        async def send(message):
            sent.append(message)

        await middleware({"type": "http", "method": "POST", "path": scope_path, "headers": []}, receive, send)

    asyncio.run(asyncio.wait_for(scenario(), 10))
    return sent


def _answering_app(wait_before_reading_s: float, read_body: bool = True):
    import asyncio

    async def app(scope, receive, send):
        await asyncio.sleep(wait_before_reading_s)
        if read_body:
            await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


def test_a_body_read_only_after_its_deadline_is_a_408_at_once():
    from serving.lifetime import RequestLifetimeMiddleware

    sent = _call(RequestLifetimeMiddleware(_answering_app(0.3), request_timeout_s=5, body_timeout_s=0.1))
    assert sent[0]["status"] == 408


def test_a_handler_that_never_reads_its_body_is_not_held_to_the_body_deadline():
    from serving.lifetime import RequestLifetimeMiddleware

    sent = _call(RequestLifetimeMiddleware(_answering_app(0.3, read_body=False), request_timeout_s=5, body_timeout_s=0.1))
    assert sent[0]["status"] == 200


def test_a_body_slower_than_its_deadline_stops_the_handler_that_waits_for_it():
    from serving.lifetime import RequestLifetimeMiddleware

    sent = _call(RequestLifetimeMiddleware(_answering_app(0.0), request_timeout_s=5, body_timeout_s=0.1), body_after_s=2)
    assert sent[0]["status"] == 408


def test_the_request_deadline_stops_the_handler_with_a_503_but_not_a_write():
    from serving.lifetime import RequestLifetimeMiddleware

    slow = _answering_app(1.0)
    assert _call(RequestLifetimeMiddleware(slow, request_timeout_s=0.1, body_timeout_s=5))[0]["status"] == 503
    assert _call(RequestLifetimeMiddleware(slow, request_timeout_s=0.1, body_timeout_s=5), "/jobs")[0]["status"] == 200


def test_cancelling_the_request_cancels_its_handler_too():
    import asyncio

    from serving.lifetime import RequestLifetimeMiddleware

    cancelled: list[bool] = []

    async def scenario():
        started = asyncio.Event()

        async def app(scope, receive, send):
            started.set()
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancelled.append(True)
                raise

        async def receive():
            await asyncio.sleep(3600)

        async def send(message):
            pass

        middleware = RequestLifetimeMiddleware(app, request_timeout_s=60, body_timeout_s=60)
        request = asyncio.create_task(middleware({"type": "http", "method": "GET", "path": "/search", "headers": []}, receive, send))
        await started.wait()
        request.cancel()  # e.g. the server shutting down
        with pytest.raises(asyncio.CancelledError):
            await request
        await asyncio.sleep(0)  # the handler's cancellation is delivered

    asyncio.run(asyncio.wait_for(scenario(), 10))
    assert cancelled == [True]
