from pathlib import Path
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.security import key_digest
from serving.settings import Settings


def client(artifacts: Path, **settings) -> TestClient:
    return TestClient(create_app(Settings(artifacts_dir=artifacts, **settings)))


def test_with_keys_every_route_but_health_needs_a_bearer_key(words_artifacts: Path):
    with client(words_artifacts, api_keys="s3cret, other") as c:
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
        missing = c.get("/similar?word=king")
        assert missing.status_code == 401 and missing.headers["www-authenticate"].startswith("Bearer")
        assert missing.json() == {"detail": "send an API key: Authorization: Bearer <key>", "error": "unauthorized"}
        assert c.get("/similar?word=king", headers={"Authorization": "Bearer wrong"}).status_code == 403
        assert c.get("/similar?word=king", headers={"Authorization": "Basic s3cret"}).status_code == 401
        for key in ("s3cret", "other"):
            assert c.get("/similar?word=king", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        assert c.get("/metrics").status_code == 401 and c.get("/openapi.json").status_code == 401
    with client(words_artifacts, api_keys="s3cret", metrics_public=True) as c:
        assert c.get("/metrics").status_code == 200


def test_a_keys_file_holds_digests_only(words_artifacts: Path, tmp_path: Path):
    keys = tmp_path / "keys"
    keys.write_text(f"# the ops team\n{key_digest('from-file')}\n")
    with client(words_artifacts, api_keys_file=keys) as c:
        assert c.get("/similar?word=king", headers={"Authorization": "Bearer from-file"}).status_code == 200
        assert c.get("/similar?word=king", headers={"Authorization": f"Bearer {key_digest('from-file')}"}).status_code == 403
    keys.write_text("not-a-digest\n")
    with pytest.raises(ValueError, match="line 1 is not a sha256 hex digest"):
        create_app(Settings(artifacts_dir=words_artifacts, api_keys_file=keys))


def test_no_open_server_on_a_network_address_unless_asked(words_artifacts: Path):
    with pytest.raises(ValueError, match="refusing to serve 0.0.0.0 without API keys"):
        create_app(Settings(artifacts_dir=words_artifacts, host="0.0.0.0"))
    create_app(Settings(artifacts_dir=words_artifacts, host="0.0.0.0", api_keys="k"))
    create_app(Settings(artifacts_dir=words_artifacts, host="0.0.0.0", allow_unauthenticated=True))
    create_app(Settings(artifacts_dir=words_artifacts, host="::1"))


def test_other_host_names_are_refused(words_artifacts: Path, monkeypatch):
    monkeypatch.delenv("EMBEDSERVE_ALLOWED_HOSTS")  # the default: loopback names only
    with TestClient(create_app(Settings(artifacts_dir=words_artifacts)), base_url="http://127.0.0.1:8000") as c:
        assert c.get("/healthz").status_code == 200
        assert c.get("/healthz", headers={"Host": "localhost:8000"}).status_code == 200
        assert c.get("/healthz", headers={"Host": "[::1]:8000"}).status_code == 200
        rebound = c.get("/similar?word=king", headers={"Host": "evil.example:8000"})
        assert rebound.status_code == 400 and rebound.json()["error"] == "bad_host"


def test_cors_is_off_unless_origins_are_set(words_artifacts: Path):
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "GET"}
    with client(words_artifacts) as c:
        assert "access-control-allow-origin" not in c.options("/similar", headers=preflight).headers
    with client(words_artifacts, cors_origins="https://app.example") as c:
        assert c.options("/similar", headers=preflight).headers["access-control-allow-origin"] == "https://app.example"


def test_a_bundle_damaged_after_export_is_refused_and_the_others_serve(words_artifacts: Path, write_image_bundle):
    from runtime.bundle import open_bundle

    write_image_bundle(words_artifacts, "tiny")
    onnx = open_bundle(words_artifacts, "tiny").file("image_encoder")
    data = bytearray(onnx.read_bytes())
    data[-10] ^= 0xFF  # one flipped byte in the weights: onnxruntime would load it and answer
    onnx.write_bytes(bytes(data))
    with client(words_artifacts) as c:
        ready = c.get("/readyz")
        assert ready.status_code == 503, ready.text
        states = {m["name"]: m["state"] for m in ready.json()["models"]}
        assert states == {"tiny": "failed", "words": "loaded"}
        assert "sha256" in next(m["error"] for m in ready.json()["models"] if m["name"] == "tiny")
        refused = c.post("/embed/image?model=tiny", files=[("files", ("a.png", b"x", "image/png"))])
        assert refused.status_code == 503 and "could not be loaded" in refused.json()["detail"]
        assert c.get("/similar?word=king").status_code == 200  # the others serve
    with client(words_artifacts, ready_with_failures=True) as c:
        assert c.get("/readyz").status_code == 200


def test_a_validation_error_says_where_and_why_without_echoing_the_input(words_artifacts: Path):
    with client(words_artifacts) as c:
        secret = "x" * 5000
        response = c.get(f"/analogy?a=king&b=man&c=woman&k={secret}")
        assert response.status_code == 422 and response.json()["error"] == "invalid_input"
        assert "query.k" in response.json()["detail"] and secret not in response.text


def test_an_unhandled_error_is_counted_as_a_500(words_artifacts: Path, monkeypatch):
    from index.word_vectors import WordVectors

    def broken(self, word, k=10):
        raise RuntimeError("a bug")

    monkeypatch.setattr(WordVectors, "similar", broken)
    with TestClient(create_app(Settings(artifacts_dir=words_artifacts)), raise_server_exceptions=False) as c:
        assert c.get("/similar?word=king").status_code == 500
        assert 'status="500"' in c.get("/metrics").text


def test_a_body_over_the_limit_is_refused_before_it_is_read(image_artifacts: Path, make_png):
    with client(image_artifacts, max_request_bytes=1000) as c:
        big = c.post("/embed/image", content=b"x" * 5000, headers={"content-type": "application/json"})
        assert big.status_code == 413 and "the limit is 1,000" in big.json()["detail"]

        def chunks():  # no Content-Length: counted as it streams
            for _ in range(10):
                yield b"y" * 500

        streamed = c.post("/embed/image", content=chunks(), headers={"content-type": "application/json"})
        assert streamed.status_code == 413
        small = c.post("/embed/image", files=[("files", ("a.png", make_png(0, (4, 4)), "image/png"))])
        assert small.status_code == 200, small.text


# Names that are paths: every name a client sends passes one rule before it touches a file.

BAD_NAMES = ["a\u0000b", "x" * 5000, "pics/current", "../..", "pics/../../elsewhere", "/tmp", "\\windows", ".hidden"]


@pytest.fixture
def indexed(image_artifacts: Path) -> Path:
    """The 'tiny' model and an index 'pics' of three random vectors built with it (ids 0..2)."""
    import numpy as np

    from index.vector_index import VectorIndex

    vectors = np.random.default_rng(0).normal(size=(3, 16)).astype(np.float32)
    VectorIndex.build(np.arange(3), vectors, [{"n": i} for i in range(3)], model="tiny", model_version="v1").save(
        image_artifacts, "pics")
    return image_artifacts


def test_a_name_that_is_a_path_is_a_422_wherever_a_client_sends_one(indexed: Path, make_png):
    with client(indexed) as c:
        for name in BAD_NAMES:
            answers = [
                c.post("/search", json={"index": name, "id": 0}),
                c.post("/search/image", files={"file": ("q.png", make_png(0), "image/png")}, data={"index": name}),
                c.post("/explain", json={"image": "AAAA", "index": name, "id": 0}),
                c.post("/embed/image", params={"model": name}, files=[("files", ("a.png", make_png(0), "image/png"))]),
                c.post("/embed/text", json={"texts": ["a"], "model": name}),
                c.post("/v1/embeddings", json={"input": "a", "model": name}),
                c.get("/similar", params={"word": "king", "model": name}),
            ]
            if "/" not in name:  # a path parameter cannot hold a '/'
                quoted = quote(name, safe="")
                answers.append(c.post(f"/indexes/{quoted}/items", json={"items": [{"id": 9, "vector": [1.0] * 16}]}))
                answers.append(c.get(f"/jobs/{quoted}"))
            for answer in answers:
                assert answer.status_code == 422, (name[:20], answer.request.url, answer.text)
                assert "not a path" in answer.text or "at most" in answer.text
        assert c.post("/search", json={"index": "pics", "id": 0}).status_code == 200


def test_an_index_folder_named_by_path_is_never_opened_nor_served(indexed: Path, tmp_path: Path):
    import shutil

    planted = tmp_path / "planted"  # a copy of 'pics' elsewhere on disk, under another name
    shutil.copytree(indexed / "indexes" / "pics", planted / "indexes" / "pics")
    with client(indexed) as c:
        before = c.get("/indexes").json()
        for name in (str(planted / "indexes" / "pics"), "pics/../../../planted/indexes/pics"):
            assert c.post("/search", json={"index": name, "id": 0}).status_code == 422
        assert c.get("/indexes").json() == before


def test_a_name_not_served_is_a_404_without_opening_anything(indexed: Path, monkeypatch):
    from index.store import FaissStore

    def never(self, name, version=None):
        raise AssertionError(f"opened {name!r}")

    with client(indexed) as c:
        monkeypatch.setattr(FaissStore, "open", never)
        monkeypatch.setattr(FaissStore, "current_version", never)
        answer = c.post("/search", json={"index": "nothing-here", "id": 0})
        assert answer.status_code == 404 and answer.json()["error"] == "unknown_index"


def test_names_read_from_disk_pass_the_same_rule(indexed: Path):
    import json
    import shutil

    def copy(folder_name: str, **changes) -> Path:
        folder = indexed / "indexes" / folder_name
        shutil.copytree(indexed / "indexes" / "pics", folder)
        manifest = folder / "v1" / "manifest.json"
        manifest.write_text(json.dumps({**json.loads(manifest.read_text()), **changes}))
        return folder

    copy("zcopy", name="pics", model="other")  # a folder whose manifest claims the name of another index
    escape = copy("escape", name="escape")  # a `current` pointer that leads out of the index's folder
    shutil.move(escape / "v1", indexed / "planted")
    (escape / "current").write_text("../../planted\n")
    copy("modelpath", name="modelpath", model="../../elsewhere")  # a manifest whose model is a path
    with client(indexed) as c:
        served = {i["name"]: i["model"] for i in c.get("/indexes").json()["indexes"]}
        assert served == {"pics": "tiny", "modelpath": "../../elsewhere"}  # its vectors serve; its model is never opened
        for name in ("zcopy", "escape"):
            assert c.post("/search", json={"index": name, "id": 0}).status_code == 404
        assert c.post("/search", json={"index": "modelpath", "id": 0}).status_code == 200
        assert c.post("/search", json={"index": "pics", "id": 0}).json()["model"] == "tiny"


def test_a_bundle_whose_manifest_names_another_model_is_not_served(words_artifacts: Path, write_image_bundle):
    import json

    write_image_bundle(words_artifacts, "tiny")
    manifest = words_artifacts / "models" / "tiny" / "v1" / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "name": "words"}))  # would replace 'words'
    with client(words_artifacts) as c:
        models = {m["name"]: m for m in c.get("/readyz").json()["models"]}
        assert models["tiny"]["state"] == "failed" and "not its folder's" in models["tiny"]["error"]
        assert models["words"]["kind"] == "word-vectors" and c.get("/similar?word=king").status_code == 200


def test_two_host_headers_are_refused(words_artifacts: Path):
    with client(words_artifacts, allowed_hosts="good.example") as c:
        twice = c.get("/healthz", headers=[("host", "evil.example"), ("host", "good.example")])
        assert twice.status_code == 400 and "more than one Host" in twice.json()["detail"]
        assert c.get("/healthz", headers={"host": "good.example"}).status_code == 200


def test_a_browser_preflight_passes_before_the_key_check(words_artifacts: Path):
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "GET",
                 "Access-Control-Request-Headers": "authorization"}
    with client(words_artifacts, api_keys="s3cret", cors_origins="https://app.example") as c:
        answer = c.options("/similar", headers=preflight)
        assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == "https://app.example"
        keyed = c.get("/similar?word=king", headers={"Origin": "https://app.example", "Authorization": "Bearer s3cret"})
        assert keyed.status_code == 200 and keyed.headers["access-control-allow-origin"] == "https://app.example"
        denied = c.get("/similar?word=king", headers={"Origin": "https://app.example"})
        assert denied.status_code == 401 and denied.headers["access-control-allow-origin"] == "https://app.example"


def test_readyz_without_a_key_says_status_and_counts_only(words_artifacts: Path, write_image_bundle):
    from runtime.bundle import open_bundle

    write_image_bundle(words_artifacts, "tiny")
    onnx = open_bundle(words_artifacts, "tiny").file("image_encoder")
    onnx.write_bytes(onnx.read_bytes()[:-10] + b"0123456789")  # fails its sha256: a load error that names a path
    with client(words_artifacts, api_keys="s3cret", ready_with_failures=True) as c:
        anonymous = c.get("/readyz")
        assert anonymous.status_code == 200
        assert anonymous.json() == {"status": "ready", "counts": {"models_loaded": 1, "models_failed": 1, "indexes": 0}}
        for headers in ({"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
            assert "models" not in c.get("/readyz", headers=headers).json()
        keyed = c.get("/readyz", headers={"Authorization": "Bearer s3cret"}).json()
        assert {m["name"]: m["state"] for m in keyed["models"]} == {"tiny": "failed", "words": "loaded"}
        error = next(m["error"] for m in keyed["models"] if m["name"] == "tiny")
        assert "sha256" in error and str(words_artifacts.resolve()) not in error
