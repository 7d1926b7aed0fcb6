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


# Fields the body limit does not bound: each has a setting, checked before the work, and a 4xx naming it.

def test_texts_past_the_character_limit_are_refused_before_they_are_tokenised(clip_bundle_artifacts, monkeypatch):
    from fastapi.testclient import TestClient

    import serving.embedding
    from serving.app import create_app
    from serving.settings import Settings

    tokenised = []
    real = serving.embedding.text_encoder_batch
    monkeypatch.setattr(serving.embedding, "text_encoder_batch", lambda *a, **k: tokenised.append(1) or real(*a, **k))
    long = "a shoe " * 10  # 70 characters
    with TestClient(create_app(Settings(artifacts_dir=clip_bundle_artifacts, max_text_chars=60))) as c:
        tokenised.clear()  # the models' probes at start-up
        answers = {
            "text 1": c.post("/embed/text", json={"texts": ["a shoe", long]}),
            "input 0": c.post("/v1/embeddings", json={"model": "clip", "input": [long]}),
            "class 1": c.post("/zero-shot", json={"images": ["AAAA"], "classes": ["a bag", long]}),
            "template 0": c.post("/zero-shot", json={"images": ["AAAA"], "classes": ["a", "b"], "templates": [long + "{}"]}),
            "label": c.post("/explain", json={"image": "AAAA", "label": long}),
        }
        for name, answer in answers.items():
            assert answer.status_code == 413, (name, answer.text)
            assert name in answer.text and "EMBEDSERVE_MAX_TEXT_CHARS" in answer.text
        assert not tokenised
        assert c.post("/embed/text", json={"texts": ["a shoe"]}).status_code == 200 and tokenised


def _index_client(image_artifacts, **settings):
    import numpy as np
    from fastapi.testclient import TestClient

    from index.vector_index import VectorIndex
    from serving.app import create_app
    from serving.settings import Settings

    vectors = np.random.default_rng(0).normal(size=(3, 16)).astype(np.float32)
    VectorIndex.build(np.arange(3), vectors, [{"n": i} for i in range(3)]).save(image_artifacts, "pics")
    return TestClient(create_app(Settings(artifacts_dir=image_artifacts, **settings)))


def test_a_vector_past_the_limit_is_refused_before_it_is_read_and_one_of_another_dimension_too(image_artifacts):
    with _index_client(image_artifacts, max_vector_dim=32) as c:
        long = c.post("/search", json={"index": "pics", "vector": [0.5] * 33})
        assert long.status_code == 413 and "EMBEDSERVE_MAX_VECTOR_DIM" in long.text
        added = c.post("/indexes/pics/items", json={"items": [{"id": 7, "vector": [0.5] * 33}]})
        assert added.status_code == 413 and "item 0's vector" in added.text
        other = c.post("/search", json={"index": "pics", "vector": [0.5] * 32})
        assert other.status_code == 422 and "16-dimensional" in other.text
        assert c.post("/search", json={"index": "pics", "vector": [0.5] * 16}).status_code == 200


def test_item_metadata_past_the_limit_is_refused_before_it_is_stored(image_artifacts):
    with _index_client(image_artifacts, max_metadata_bytes=100) as c:
        big = c.post("/indexes/pics/items", json={"items": [{"id": 7, "vector": [0.5] * 16, "metadata": {"x": "é" * 60}}]})
        assert big.status_code == 413 and "EMBEDSERVE_MAX_METADATA_BYTES" in big.text and "item 0" in big.text
        assert c.get("/indexes").json()["indexes"][0]["count"] == 3
        small = c.post("/indexes/pics/items", json={"items": [{"id": 7, "vector": [0.5] * 16, "metadata": {"x": "é"}}]})
        assert small.status_code == 200, small.text


def test_a_filter_integer_past_int64_is_a_422(image_artifacts):
    with _index_client(image_artifacts) as c:
        answer = c.post("/search", json={"index": "pics", "id": 0, "where": {"n": 10**30}})
        assert answer.status_code == 422 and "64 bits" in answer.json()["detail"]
        assert c.post("/search", json={"index": "pics", "id": 0, "where": {"n": 2}}).json()["hits"][0]["id"] == 2
