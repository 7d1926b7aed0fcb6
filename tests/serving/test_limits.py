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


def test_requests_past_the_inflight_limit_are_answered_429_at_once_and_probes_still_answer(slow_artifacts, start_server,
                                                                                          make_png):
    import base64
    import json
    import threading
    import urllib.request

    body = json.dumps({"images": [base64.b64encode(make_png(i, size=(8, 8))).decode() for i in range(64)],
                       "model": "slow"}).encode()

    def post() -> int:
        request = urllib.request.Request(server.url + "/embed/image", data=body, headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=120) as r:
                return r.status
        except urllib.error.HTTPError as e:
            answers.append(e.headers.get("retry-after"))
            return e.code

    with start_server(slow_artifacts, max_inflight_requests=2, max_batch_size=64) as server:
        answers: list = []
        busy = [threading.Thread(target=lambda: answers.append(post())) for _ in range(2)]
        for thread in busy:
            thread.start()
        server.wait_for(lambda: server.metric("embedserve_inflight_requests") == 2, "two requests in progress")
        assert post() == 429 and answers[-1] == "1"  # the third, refused at once with Retry-After
        assert server.get("/healthz")[0] == 200 and server.get("/metrics")[0] == 200  # probes are never refused
        for thread in busy:
            thread.join(timeout=120)
        assert sorted(a for a in answers if isinstance(a, int)) == [200, 200]
        assert post() == 200  # room again once they are done
