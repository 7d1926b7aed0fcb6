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
