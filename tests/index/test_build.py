import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from runtime.bundle import BundleError
from index.build import build_image_index
from index.vector_index import open_index
from serving.app import create_app
from serving.settings import Settings
from runtime.fashion_mnist import DEFAULT_FASHION_MNIST_ROOT
from runtime.sources import SourceError

@pytest.fixture
def artifacts(image_artifacts: Path) -> Path:
    """An artifacts folder with the tiny image-encoder bundle 'tiny' (see tests/conftest.py)."""
    return image_artifacts


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """Seven noise images in two class folders, one of them nested a level deeper."""
    rng = np.random.default_rng(1)
    paths = ["cat/a.png", "cat/b.jpg", "cat/kittens/c.png", "dog/d.png", "dog/e.bmp", "dog/f.png", "dog/g.png"]
    for relative in paths:
        path = tmp_path / "images" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, size=(10, 12, 3), dtype=np.uint8), "RGB").save(path)
    (tmp_path / "images" / "notes.txt").write_text("not an image")  # ignored
    return tmp_path / "images"


def test_folder_index_finds_each_image_by_its_own_id(artifacts: Path, image_folder: Path):
    built = build_image_index(artifacts, "pets", "tiny", image_folder, batch_size=3, progress=False)
    assert built.version == "v1" and built.indexed == 7 and built.skipped == {}
    assert (artifacts / "indexes" / "pets" / "v1").is_dir()
    index = open_index(artifacts, "pets")
    assert len(index) == 7 and index.model == "tiny" and index.model_version == "v1"
    assert index.manifest.extra["source"] == str(image_folder.resolve())
    for id in range(7):
        _, found = index.search(index.vector(id)[None, :], k=1)
        assert found[0, 0] == id
    metadata = index.metadata(range(7))
    assert {m["path"] for m in metadata} == {"cat/a.png", "cat/b.jpg", "cat/kittens/c.png", "dog/d.png", "dog/e.bmp", "dog/f.png", "dog/g.png"}
    assert all(m["class"] == m["path"].split("/")[0] for m in metadata)


def test_unreadable_and_oversized_images_are_skipped_and_counted_and_the_cli_says_which(artifacts, image_folder, capsys,
                                                                                        monkeypatch):
    from embedserve.cli import main
    from runtime.preprocessing import ImageLimits

    (image_folder / "cat" / "a.png").write_bytes((image_folder / "cat" / "a.png").read_bytes()[:40])  # truncated
    Image.new("RGB", (50, 50)).save(image_folder / "dog" / "h.png")  # 2,500 pixels: over the limit below
    built = build_image_index(artifacts, "pets", "tiny", image_folder, progress=False, limits=ImageLimits(max_pixels=1000))
    assert built.indexed == 6 and sorted(built.skipped) == [0, 7]  # cat/a.png and dog/h.png, by position
    assert "the limit is 1,000 pixels (EMBEDSERVE_MAX_IMAGE_PIXELS)" in built.skipped[7]
    index = open_index(artifacts, "pets")
    assert len(index) == 6 and index.manifest.extra["skipped"] == 2
    assert {m["path"] for m in index.metadata(index.ids())} == {"cat/b.jpg", "cat/kittens/c.png", "dog/d.png", "dog/e.bmp",
                                                              "dog/f.png", "dog/g.png"}
    monkeypatch.setenv("EMBEDSERVE_MAX_IMAGE_PIXELS", "1000")  # the CLI reads the server's settings
    assert main(["index", "build", "--name", "pets", "--model", "tiny", "--source", str(image_folder),
                 "--artifacts", str(artifacts)]) == 0
    out = capsys.readouterr().out
    assert "6 images indexed, 2 skipped" in out and out.count("\n  skipped ") == 2
    assert "h.png: image is 50x50 = 2,500 pixels" in out
    for path in image_folder.rglob("*.*"):
        path.write_bytes(b"broken")
    with pytest.raises(SourceError, match=r"no image of .* could be read \(8 skipped; the first: "):
        build_image_index(artifacts, "pets", "tiny", image_folder, progress=False)


def test_indexed_vectors_match_what_the_server_returns_for_the_same_file(artifacts: Path, image_folder: Path):
    build_image_index(artifacts, "pets", "tiny", image_folder, limit=2, progress=False)
    index = open_index(artifacts, "pets")
    assert len(index) == 2
    first = image_folder / index.metadata([0])[0]["path"]
    with TestClient(create_app(Settings(artifacts_dir=artifacts))) as client:
        served = client.post("/embed/image", files={"files": (first.name, first.read_bytes())}).json()["embeddings"][0]
    np.testing.assert_allclose(index.vector(0), served, atol=1e-5)


@pytest.mark.skipif(not DEFAULT_FASHION_MNIST_ROOT.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_split_records_split_position_label_and_class(artifacts: Path):
    build_image_index(artifacts, "fm", "tiny", "fashion-mnist:test", limit=20, progress=False)
    index = open_index(artifacts, "fm")
    assert len(index) == 20 and index.manifest.extra["source"] == "fashion-mnist:test"
    meta = index.metadata([0, 19])
    assert meta[0] == {"source": "fashion-mnist:test", "split": "test", "position": 0, "label": 9, "class": "Ankle boot"}  # the first test image
    assert meta[1]["position"] == 19


def test_unknown_source_and_wrong_model_kind_are_refused(artifacts: Path, tmp_path: Path):
    with pytest.raises(SourceError, match="neither a folder"):
        build_image_index(artifacts, "x", "tiny", tmp_path / "missing", progress=False)
    with pytest.raises(BundleError, match="no model named"):
        build_image_index(artifacts, "x", "nope", tmp_path, progress=False)


def test_index_and_serving_modules_do_not_import_torch():
    code = "import sys, index.build, index.vector_index, serving.app; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[2]).returncode == 0


def test_a_clip_model_indexes_with_its_image_tower_and_answers_text_queries(clip_artifacts: Path, image_folder: Path):
    build_image_index(clip_artifacts, "clip-images", "clip", image_folder, progress=False)
    index = open_index(clip_artifacts, "clip-images")
    assert len(index) == 7 and index.model == "clip"
    with TestClient(create_app(Settings(artifacts_dir=clip_artifacts))) as client:
        served = client.post("/embed/image", params={"model": "clip"}, files={"files": (image_folder / "dog/d.png").read_bytes()})
        text = client.post("/search", json={"index": "clip-images", "text": "a photo of a dog", "k": 3})
    assert served.status_code == 200 and text.status_code == 200, text.text
    position = next(i for i in range(7) if index.metadata([i])[0]["path"].endswith("d.png"))
    np.testing.assert_allclose(index.vector(position), served.json()["embeddings"][0], atol=1e-5)
    assert len(text.json()["hits"]) == 3


def test_an_index_records_its_precision_and_a_server_querying_at_another_says_so(tmp_path: Path, image_folder: Path,
                                                                                 write_variant_bundle, caplog):
    from runtime.config import RuntimeConfig

    artifacts = tmp_path / "artifacts"
    write_variant_bundle(artifacts, "tiny")
    build_image_index(artifacts, "int8", "tiny", image_folder, progress=False, runtime=RuntimeConfig(precision="int8"))
    build_image_index(artifacts, "fp32", "tiny", image_folder, progress=False, runtime=RuntimeConfig(precision="fp32"))
    assert open_index(artifacts, "int8").manifest.extra["precision"] == "int8"
    with caplog.at_level("WARNING"), TestClient(create_app(Settings(artifacts_dir=artifacts, precision="fp32"))) as client:
        listed = {i["name"]: i["precision"] for i in client.get("/indexes").json()["indexes"]}
    assert listed == {"int8": "int8", "fp32": "fp32"}
    warnings = [r.getMessage() for r in caplog.records if "was embedded at" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("index int8 was embedded at int8 but its image queries run at fp32")
