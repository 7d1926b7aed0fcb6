"""`embedserve serve` as a process: a deadline and a size limit on headers, and SIGTERM with work in flight."""

from __future__ import annotations

import base64
import json
import signal
import socket
import threading
import urllib.request

from PIL import Image

from index.jobs import JobStore


def test_headers_that_come_too_slowly_get_a_408_and_the_connection_closed(image_artifacts, start_server):
    with start_server(image_artifacts, header_timeout_s=0.5) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # the blank line that ends the headers never comes
            answer = b"".join(iter(lambda: s.recv(65536), b""))
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert server.get("/healthz")[0] == 200  # a prompt client is served as ever


def test_headers_past_the_limit_get_a_431_and_the_connection_closed_before_they_are_all_sent(image_artifacts, start_server):
    with start_server(image_artifacts, max_header_bytes=4096) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
            try:  # the server answers and closes long before 64 MiB: the rest is refused on the way
                for _ in range(1024):
                    s.sendall(b"x" * 65536)
            except (BrokenPipeError, ConnectionResetError):
                pass
            answer = b"".join(iter(lambda: s.recv(65536), b""))
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
        assert b"EMBEDSERVE_MAX_HEADER_BYTES" in answer
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:  # headers within it, kept alive
            request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Fill: " + b"y" * 3000 + b"\r\n\r\n"
            s.sendall(request * 3)  # three pipelined requests, each within the limit on its own
            answers = b""
            while answers.count(b"HTTP/1.1 200 ") < 3:
                answers += s.recv(65536)
        assert server.get("/healthz")[0] == 200


def post_json(url: str, path: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_sigterm_finishes_the_requests_in_flight_checkpoints_the_job_and_exits_0(slow_artifacts, start_server, make_png, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(2048):  # a job long enough (tens of seconds) to be mid-way at the stop on any machine
        Image.new("L", (8, 8), i % 256).save(folder / f"{i:03}.png")
    images = [base64.b64encode(make_png(i, size=(8, 8))).decode() for i in range(64)]
    with start_server(slow_artifacts, max_batch_size=64, data_roots=folder) as server:
        status, job = post_json(server.url, "/jobs", {"source": str(folder), "model": "slow", "index": "pics", "batch_size": 32})
        assert status == 202, job
        job_done = lambda: json.loads(server.get(f"/jobs/{job['id']}")[1])["done"]  # noqa: E731
        server.wait_for(lambda: job_done() >= 32, "the job's first batch")

        answers: list[tuple[int, dict]] = []
        clients = [threading.Thread(target=lambda: answers.append(post_json(server.url, "/embed/image",
                                                                            {"images": images, "model": "slow"})))
                   for _ in range(3)]
        for client in clients:
            client.start()
        server.wait_for(lambda: server.metric("embedserve_queued_rows", model="slow") >= 3 * 64, "the requests to queue")
        server.process.send_signal(signal.SIGTERM)
        for client in clients:
            client.join(timeout=120)
        assert server.process.wait(timeout=120) == 0, server.log.read_text()[-3000:]

    assert [status for status, _ in answers] == [200, 200, 200], answers
    assert all(len(body["embeddings"]) == 64 for _, body in answers)
    stopped = JobStore(slow_artifacts).get(job["id"])
    assert stopped.state == "running" and 32 <= stopped.done < 2048  # checkpointed part-way, to resume

    with start_server(slow_artifacts, max_batch_size=64, data_roots=folder) as server:  # the next start resumes it
        status = lambda: json.loads(server.get(f"/jobs/{job['id']}")[1])  # noqa: E731
        server.wait_for(lambda: status()["state"] == "running" and status()["done"] > stopped.done, "the job to go on")
        assert status()["done"] >= stopped.done  # from its checkpoint, not from the start
        cancel = urllib.request.Request(f"{server.url}/jobs/{job['id']}", method="DELETE")
        urllib.request.urlopen(cancel, timeout=30).close()
        server.wait_for(lambda: status()["state"] == "cancelled", "the job to stop")


def test_a_running_server_keeps_what_start_up_made_out_of_full_garbage_collections(image_artifacts):
    import gc

    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.settings import Settings

    with TestClient(create_app(Settings(artifacts_dir=image_artifacts))) as client:
        assert client.get("/healthz").status_code == 200
        assert gc.get_freeze_count() > 0  # the app, its models and modules: not walked by every full collection
    assert gc.get_freeze_count() == 0  # handed back at shut-down


def test_two_workers_keep_every_write_and_answer_alike(image_artifacts, start_server):
    """`--workers 2`: concurrent writes land on either worker (the kernel hands each connection to
    one), each building on the other's; none is lost and both answer with every item."""
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path

    import numpy as np

    from index.vector_index import VectorIndex

    eye = np.eye(16, dtype=np.float32)
    VectorIndex.build(np.arange(4), eye[:4], None, "flat", None, None).save(image_artifacts, "vecs")
    with start_server(image_artifacts, workers=2) as server:
        children = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _parent(p) == server.process.pid]
        assert len(children) >= 2, "uvicorn did not start two workers"

        def add(n: int) -> int:
            vector = np.random.default_rng(n).normal(size=16)
            item = {"id": 100 + n, "vector": (vector / np.linalg.norm(vector)).tolist(), "metadata": {"n": n}}
            return post_json(server.url, "/indexes/vecs/items", {"items": [item]})[0]

        with ThreadPoolExecutor(8) as pool:
            assert list(pool.map(add, range(24))) == [200] * 24
        for _ in range(8):  # a new connection each time, to either worker
            status, body = server.get("/indexes")
            assert status == 200 and json.loads(body)["indexes"][0]["count"] == 28
            status, found = post_json(server.url, "/search", {"index": "vecs", "id": 123, "k": 1})
            assert status == 200 and found["hits"][0]["metadata"] == {"n": 23}


def _parent(proc) -> int:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):  # gone meanwhile
        return -1
