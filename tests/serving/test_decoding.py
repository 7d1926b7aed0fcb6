"""Photos of several hundred pixels, as users send them, through every route that takes images:
each answers what the bundle's own preprocessing and model compute for the photo in process, and
decodes on the decoder's threads rather than on the event loop."""

import base64
import io
import threading
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import sklearn
from fastapi.testclient import TestClient
from PIL import Image

import serving.decoding
from runtime.bundle import open_bundle
from runtime.config import RuntimeConfig
from runtime.encoders.factory import load_encoder
from runtime.preprocessing import decode_image, preprocess_batch
from runtime.vectors import unit_rows
from serving.app import create_app
from serving.settings import Settings

OPENCLIPART = Path("/usr/share/openclipart/png")


def installed_photos() -> dict[str, bytes]:
    """JPEG photos that installed packages ship, and a transparent Open Clip Art PNG where the Debian package is."""
    photos = {"china.jpg": Path(sklearn.__file__).parent / "datasets" / "images" / "china.jpg",
              "grace_hopper.jpg": Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"}
    for path in sorted(OPENCLIPART.glob("animals/*.png")):
        with Image.open(path) as img:
            if img.mode == "RGBA" and 300 <= min(img.size) <= 1000:
                photos[path.name] = path
                break
    return {name: path.read_bytes() for name, path in photos.items()}


PHOTOS = installed_photos()


@pytest.fixture(scope="module")
def client(clip_bundle_artifacts: Path):
    with TestClient(create_app(Settings(artifacts_dir=clip_bundle_artifacts, max_wait_ms=1))) as client:
        yield client


def data_url(photo: bytes) -> str:
    kind = "jpeg" if photo.startswith(b"\xff\xd8") else "png"
    return f"data:image/{kind};base64,{base64.b64encode(photo).decode()}"


def in_process(artifacts: Path, photo: bytes) -> np.ndarray:
    """The photo's unit vector from the bundle alone: decode at the model's size, preprocess, the fp32 image tower."""
    bundle = open_bundle(artifacts, "clip")
    spec = bundle.manifest.preprocessing
    encoder = load_encoder(bundle, RuntimeConfig(execution_providers="cpu", precision="fp32"), "image_encoder")
    return unit_rows(encoder.encode(preprocess_batch([decode_image(photo, resize=spec.resize)], spec)))[0]  # (D,)


@pytest.mark.parametrize("name", sorted(PHOTOS))
def test_a_photo_embeds_alike_through_every_route(client: TestClient, clip_bundle_artifacts: Path, name: str):
    photo = PHOTOS[name]
    assert min(Image.open(io.BytesIO(photo)).size) >= 300  # a photo, not a thumbnail
    expected = in_process(clip_bundle_artifacts, photo)
    multipart = client.post("/embed/image", params={"model": "clip"}, files=[("files", (name, photo, "image/jpeg"))])
    as_json = client.post("/embed/image", json={"images": [base64.b64encode(photo).decode()], "model": "clip"})
    openai = client.post("/v1/embeddings", json={"model": "clip", "input": [data_url(photo)]})
    for answer in (multipart, as_json, openai):
        assert answer.status_code == 200, answer.text
    served = [multipart.json()["embeddings"][0], as_json.json()["embeddings"][0], openai.json()["data"][0]["embedding"]]
    for vector in served:
        np.testing.assert_allclose(vector, expected, atol=1e-5)
    # zero-shot with the bare class names: its cosines are the photo's vector against the names' text vectors
    classes = ["a dress", "a sneaker"]
    zero_shot = client.post("/zero-shot", json={"images": [data_url(photo)], "classes": classes, "model": "clip",
                                                "templates": ["{}"], "normalization": "none"})
    assert zero_shot.status_code == 200, zero_shot.text
    texts = np.array(client.post("/embed/text", json={"texts": classes, "model": "clip"}).json()["embeddings"])  # (2, D)
    cosines = {label["label"]: label["cosine"] for label in zero_shot.json()["results"][0]["labels"]}
    np.testing.assert_allclose([cosines[c] for c in classes], texts @ expected, atol=1e-5)


def test_a_photo_decodes_on_the_decoders_threads_and_a_thumbnail_on_the_loop(client: TestClient, monkeypatch, make_png):
    threads = []
    real = serving.decoding.load_pixels

    def recording(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(serving.decoding, "load_pixels", recording)
    photo = PHOTOS["china.jpg"]
    assert client.post("/embed/image", params={"model": "clip"}, files=[("files", ("p.jpg", photo, "image/jpeg"))]).status_code == 200
    assert client.post("/embed/image", params={"model": "clip"}, files=[("files", ("t.png", make_png(0), "image/png"))]).status_code == 200
    assert threads[0].startswith("decode") and not threads[1].startswith("decode"), threads
