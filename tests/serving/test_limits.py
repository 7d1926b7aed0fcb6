"""The bytes of request bodies held at once are bounded: past the budget, a 429 before the body is read."""

from __future__ import annotations

import socket


def test_bodies_past_the_inflight_budget_are_answered_429_before_they_are_read(image_artifacts, start_server):
    with start_server(image_artifacts, max_inflight_bytes=1000, body_timeout_s=30) as server:
        head = ("POST /embed/image HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                "Content-Length: {}\r\n\r\n")
        holding = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        holding.sendall(head.format(900).encode() + b'{"images": [')  # 900 bytes announced, most still to come
        server.wait_for(lambda: server.metric("embedserve_inflight_body_bytes") == 900, "the first body to be held")
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=30) as second:
                second.sendall(head.format(500).encode())  # 900 + 500 > 1000: refused without a byte of its body
                answer = b"".join(iter(lambda: second.recv(65536), b""))
            assert answer.startswith(b"HTTP/1.1 429 "), answer[:300]
            assert b"retry-after: 1" in answer.lower() and b"EMBEDSERVE_MAX_INFLIGHT_BYTES" in answer
        finally:
            holding.close()
        # the first request's share is given back when it ends
        server.wait_for(lambda: server.metric("embedserve_inflight_body_bytes") == 0, "the budget to be given back")
