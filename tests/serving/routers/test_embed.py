import base64
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.settings import Settings


@pytest.fixture
def client(image_artifacts: Path):
    settings = Settings(artifacts_dir=image_artifacts, max_images_per_request=4, max_image_bytes=50_000, max_wait_ms=1)
    with TestClient(create_app(settings)) as client:
        yield client


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def embed_files(client: TestClient, *blobs: bytes, **params):
    return client.post("/embed/image", files=[("files", (f"{i}.png", b, "image/png")) for i, b in enumerate(blobs)], params=params)


def test_multipart_images_come_back_normalised_in_request_order(client: TestClient, make_png):
    blobs = [make_png(seed) for seed in range(3)]
    response = embed_files(client, *blobs)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "tiny" and body["version"] == "v1" and body["dim"] == 16
    embeddings = np.array(body["embeddings"])
    assert embeddings.shape == (3, 16)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    singles = [np.array(embed_files(client, b).json()["embeddings"][0]) for b in blobs]
    np.testing.assert_allclose(embeddings, np.stack(singles), atol=1e-5)  # row i is image i
    assert not np.allclose(singles[0], singles[1])


def test_base64_json_gives_the_same_embeddings_as_multipart(client: TestClient, make_png):
    blobs = [make_png(seed) for seed in (4, 5)]
    images = [b64(blobs[0]), "data:image/png;base64," + b64(blobs[1])]
    response = client.post("/embed/image", json={"images": images, "model": "tiny"})
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(response.json()["embeddings"], embed_files(client, *blobs).json()["embeddings"], atol=1e-5)


def test_model_as_query_parameter(image_artifacts: Path, write_image_bundle, make_png):
    write_image_bundle(image_artifacts, "other", seed=1)  # a second model, with other weights
    with TestClient(create_app(Settings(artifacts_dir=image_artifacts))) as client:
        tiny, other = (embed_files(client, make_png(0), model=name).json() for name in ("tiny", "other"))
        assert (tiny["model"], other["model"]) == ("tiny", "other")
        assert not np.allclose(tiny["embeddings"], other["embeddings"])  # each model really ran


@pytest.mark.parametrize(
    "request_kwargs, status, error",
    [
        ({"content": b""}, 422, "invalid_input"),  # empty body
        ({"json": {"images": []}}, 422, "invalid_input"),  # no images
        ({"json": {"pictures": ["x"]}}, 422, "invalid_input"),  # wrong JSON shape
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 422, "invalid_input"),
        ({"json": {"images": ["not base64!"]}}, 422, "invalid_input"),
        ({"json": {"images": ["aGVsbG8="] * 5}}, 413, "payload_too_large"),  # above max_images_per_request
        ({"json": {"images": [b64(b"plain text, not an image")]}}, 415, "unsupported_media_type"),
        ({"json": {"images": [b64(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)]}}, 422, "invalid_input"),  # truncated
        ({"json": {"images": [b64(b"\x89PNG" + b"\x00" * 60_000)]}}, 413, "payload_too_large"),  # above max_image_bytes
        ({"json": {"images": ["aGVsbG8="], "model": "nope"}}, 404, "unknown_model"),
        ({"content": b"hello", "headers": {"content-type": "text/plain"}}, 415, "unsupported_media_type"),
        ({"files": [("other", ("a.png", b"x", "image/png"))]}, 422, "invalid_input"),  # wrong multipart field
    ],
)
def test_bad_requests_get_their_status_and_the_server_keeps_serving(client: TestClient, make_png, request_kwargs, status, error):
    response = client.post("/embed/image", **request_kwargs)
    assert response.status_code == status, response.text
    assert response.json()["error"] == error and response.json()["detail"]
    assert embed_files(client, make_png(0)).status_code == 200


def test_unknown_model_lists_the_available_ones(client: TestClient, make_png):
    response = embed_files(client, make_png(0), model="nope")
    assert response.status_code == 404 and "tiny" in response.json()["detail"]


def test_too_many_multipart_files_is_413(client: TestClient, make_png):
    response = embed_files(client, *[make_png(0)] * 5)
    assert response.status_code == 413 and "4" in response.json()["detail"]


def test_batch_sizes_are_recorded_in_metrics(client: TestClient, make_png):
    embed_files(client, make_png(0), make_png(1))
    metrics = client.get("/metrics").text
    assert 'embedserve_batch_size_count{model="tiny"}' in metrics
    assert 'embedserve_batch_size_sum{model="tiny"} 2.0' in metrics


def test_batching_off_gives_the_same_embeddings(image_artifacts: Path, make_png):
    with TestClient(create_app(Settings(artifacts_dir=image_artifacts, batching=False))) as unbatched:
        off = unbatched.post("/embed/image", files=[("files", ("a.png", make_png(3), "image/png"))]).json()["embeddings"]
    with TestClient(create_app(Settings(artifacts_dir=image_artifacts))) as batched:
        on = batched.post("/embed/image", files=[("files", ("a.png", make_png(3), "image/png"))]).json()["embeddings"]
    np.testing.assert_allclose(off, on, atol=1e-6)


@pytest.mark.parametrize("size", [(12, 10), (320, 240)])  # decoded on the event loop / in a worker thread
def test_small_and_large_images_embed_exactly_as_the_model_does(client: TestClient, image_artifacts: Path, size):
    import io

    import onnxruntime as ort
    from PIL import Image

    from runtime.bundle import open_bundle
    from runtime.preprocessing import decode_image, preprocess_batch
    from serving.decoding import INLINE_DECODE_MAX_PIXELS

    assert (size[0] * size[1] <= INLINE_DECODE_MAX_PIXELS) == (size == (12, 10))
    x, y = np.meshgrid(np.linspace(0, 255, size[0]), np.linspace(0, 255, size[1]))
    out = io.BytesIO()
    Image.fromarray(np.stack([x, y, (x + y) / 2], axis=-1).astype(np.uint8), "RGB").save(out, "PNG")  # smooth: small file
    blob = out.getvalue()
    bundle = open_bundle(image_artifacts, "tiny")
    session = ort.InferenceSession(str(bundle.file("image_encoder")), providers=["CPUExecutionProvider"])
    spec = bundle.manifest.preprocessing  # a large image decodes at about the model's size (runtime.preprocessing.load_pixels)
    batch = preprocess_batch([decode_image(blob, resize=spec.resize)], spec)  # (1, C, H, W)
    expected = session.run(None, {session.get_inputs()[0].name: batch})[0][0]
    response = embed_files(client, blob)
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(response.json()["embeddings"][0], expected / np.linalg.norm(expected), atol=1e-5)


def test_the_openapi_schema_still_documents_the_embed_response(client: TestClient):
    # the route answers with a prebuilt JSON Response; its response_model must still reach the docs
    schema = client.get("/openapi.json").json()
    ok = schema["paths"]["/embed/image"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/EmbedResponse"}
    assert set(schema["components"]["schemas"]["EmbedResponse"]["properties"]) == {"model", "version", "dim", "embeddings"}


def test_a_request_over_its_pixel_budget_is_refused_before_decoding(image_artifacts: Path):
    import io

    from PIL import Image

    settings = Settings(artifacts_dir=image_artifacts, max_request_pixels=3 * 100 * 100)
    blobs = []
    for _ in range(4):  # four 100×100 images: each in every per-image limit, together over the request's
        out = io.BytesIO()
        Image.new("L", (100, 100), 7).save(out, "PNG")
        blobs.append(out.getvalue())
    with TestClient(create_app(settings)) as client:
        assert embed_files(client, *blobs[:3]).status_code == 200
        response = embed_files(client, *blobs)
    assert response.status_code == 413, response.text
    assert "40,000 pixels" in response.json()["detail"]
    assert "EMBEDSERVE_MAX_REQUEST_PIXELS" in response.json()["detail"]
