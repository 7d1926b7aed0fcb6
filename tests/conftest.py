"""Fixtures shared across the test tree: tiny artifacts made on the spot."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from export.bundle import Manifest, write_bundle
from export.word_vectors import write_word_vectors_bundle

# A planted vocabulary: axis 0 is royalty, axis 1 is gender, axis 2 is youth, the rest is
# small noise, so that king − man + woman lands on queen and fruit words sit apart.
PLANTED = {
    "king": [1, 1, 0],
    "queen": [1, -1, 0],
    "man": [0, 1, 0],
    "woman": [0, -1, 0],
    "prince": [1, 1, 1],
    "princess": [1, -1, 1],
    "café": [-1, 0, -1],
    "apple": [-1, 0.1, -1],
    "banana": [-1, -0.1, -1],
}


def planted_vectors(dim: int = 8, seed: int = 0) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    words = list(PLANTED)
    vectors = rng.normal(scale=0.01, size=(len(words), dim)).astype(np.float32)
    vectors[:, :3] = np.array([PLANTED[w] for w in words], dtype=np.float32)
    return words, vectors


@pytest.fixture
def planted() -> tuple[list[str], np.ndarray]:
    return planted_vectors()


@pytest.fixture
def words_artifacts(tmp_path: Path) -> Path:
    """An artifacts folder holding one word-vectors bundle named 'words'."""
    words, vectors = planted_vectors()
    counts = np.arange(len(words), 0, -1) * 10
    write_word_vectors_bundle(tmp_path, "words", words, counts, vectors, metrics={"analogy_total": 1.0})
    return tmp_path


# A real, tiny image-encoder bundle (an ONNX Flatten + MatMul) for serving and index tests.

SIZE, DIM = 8, 16
SPEC = {"mode": "L", "channels": 1, "resize": SIZE, "crop": SIZE, "mean": [0.5], "std": [0.5], "interpolation": "bilinear"}


def write_tiny_image_bundle(artifacts: Path, name: str = "tiny", seed: int = 0) -> None:
    """An image-encoder bundle whose model is images (B, 1, 8, 8) → flatten → @ W (64, 16)."""
    weights = np.random.default_rng(seed).normal(size=(SIZE * SIZE, DIM)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["images"], ["flat"], axis=1), helper.make_node("MatMul", ["flat", "W"], ["embeddings"])],
        "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 1, SIZE, SIZE])],
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["batch", DIM])],
        [numpy_helper.from_array(weights, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    manifest = Manifest(name=name, kind="image-encoder", method="simclr", dim=DIM, normalized=False,
                        files={"image_encoder": "image_encoder.onnx"}, preprocessing=SPEC)
    write_bundle(artifacts, manifest, lambda folder: onnx.save(model, str(folder / "image_encoder.onnx")))


def png(seed: int, size: tuple[int, int] = (12, 10)) -> bytes:
    """A noise image, different for each seed, PNG-encoded."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, "PNG")
    return out.getvalue()


@pytest.fixture
def image_artifacts(tmp_path: Path) -> Path:
    """An artifacts folder holding the image-encoder bundle 'tiny' (v1)."""
    write_tiny_image_bundle(tmp_path)
    return tmp_path


@pytest.fixture
def make_png():
    """png(seed, size=(w, h)) → the bytes of a noise PNG, different for each seed."""
    return png


@pytest.fixture
def write_image_bundle():
    """write_tiny_image_bundle(artifacts, name, seed): another version, with other weights per seed."""
    return write_tiny_image_bundle
