import base64
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

import export.clip_import as clip_import
from embedserve.cli import main
from export.clip_folders import read_clip_folder
from export.clip_import import import_clip
from export.folders import FolderError
from export.onnx import ParityError
from runtime.bundle import open_bundle
from runtime.config import RuntimeConfig
from runtime.encoders.factory import load_encoder
from serving.app import create_app
from serving.settings import Settings
from tests.clip_models import OPEN_CLIP_CFG, photo_png, write_open_clip, write_transformers_clip

# Texts and classes the import's own checks never saw: one word to past the 77-token context,
# several scripts and emoji.
TEXTS = ["cat", "a diagram of a steam engine", "une maison au bord de la mer", "雪の中の犬", "🎉 party time 🎈"]
CLASSES = ["a dog", "a cat", "a red car", "a mountain at dawn"]


def unit(x) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def cosines(a, b) -> np.ndarray:
    return (unit(a) * unit(b)).sum(-1)


class TransformersReference:
    """What transformers itself computes for the folder: the library the served answers must match."""

    def __init__(self, folder: Path):
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

        self.model = CLIPModel.from_pretrained(str(folder)).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.processor = CLIPImageProcessor.from_pretrained(str(folder))

    def images(self, blobs: list[bytes]) -> np.ndarray:
        pixels = self.processor(images=[Image.open(io.BytesIO(b)) for b in blobs], return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            out = self.model.get_image_features(pixel_values=pixels)
        return (out if isinstance(out, torch.Tensor) else out.pooler_output).numpy()

    def texts(self, texts: list[str]) -> np.ndarray:
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=77, return_tensors="pt")
        with torch.no_grad():
            out = self.model.get_text_features(**batch)
        return (out if isinstance(out, torch.Tensor) else out.pooler_output).numpy()

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().exp())


class OpenClipReference:
    """What open_clip itself computes for the folder: encode_image on its transform, encode_text on its tokenizer."""

    def __init__(self, folder: Path):
        import open_clip

        self.model, _, self.transform = open_clip.create_model_and_transforms(f"local-dir:{folder}")
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")

    def images(self, blobs: list[bytes]) -> np.ndarray:
        with torch.no_grad():
            return self.model.encode_image(torch.stack([self.transform(Image.open(io.BytesIO(b))) for b in blobs])).numpy()

    def texts(self, texts: list[str]) -> np.ndarray:
        with torch.no_grad():
            return self.model.encode_text(self.tokenizer(texts)).numpy()

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().exp())


@pytest.fixture(scope="module")
def hf_reference(hf_clip_folder: Path) -> TransformersReference:
    return TransformersReference(hf_clip_folder)


@pytest.fixture(scope="module")
def open_clip_reference(open_clip_folder: Path) -> OpenClipReference:
    return OpenClipReference(open_clip_folder)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[bytes]:
    """Photos unlike the import's: other sizes and aspect ratios, a greyscale one, a JPEG."""
    folder = tmp_path_factory.mktemp("served-photos")
    paths = [photo_png(folder, "wide.png", (90, 33)), photo_png(folder, "tall.png", (41, 77), "L")]
    jpeg = folder / "photo.jpg"
    Image.open(photo_png(folder, "square.png", (70, 70))).save(jpeg, quality=90)
    return [p.read_bytes() for p in paths + [jpeg]]


def served(artifacts: Path, **settings):
    return TestClient(create_app(Settings(artifacts_dir=artifacts, precision="fp32", max_wait_ms=1, **settings)))


def check_served_answers(client: TestClient, model: str, reference, photos: list[bytes]) -> None:
    """/embed/image, /embed/text, /v1/embeddings and /zero-shot against the library's own numbers."""
    images = client.post("/embed/image", files=[("files", (f"{i}", b, "image/png")) for i, b in enumerate(photos)],
                         params={"model": model})
    assert images.status_code == 200, images.text
    assert cosines(images.json()["embeddings"], reference.images(photos)).min() >= 0.999

    texts = client.post("/embed/text", json={"texts": TEXTS, "model": model})
    assert texts.status_code == 200, texts.text
    assert cosines(texts.json()["embeddings"], reference.texts(TEXTS)).min() >= 0.9999

    long = " ".join(["a long caption about a sunny beach with palm trees"] * 12)  # past the 77 tokens
    refused = client.post("/embed/text", json={"texts": [long], "model": model})
    assert refused.status_code == 422 and "77 tokens" in refused.json()["detail"] and "truncate" in refused.json()["detail"]
    cut = client.post("/embed/text", json={"texts": [long], "model": model, "truncate": True})
    assert cosines(cut.json()["embeddings"], reference.texts([long])).min() >= 0.9999  # cut as the library cuts it

    data_url = "data:image/png;base64," + base64.b64encode(photos[0]).decode()
    openai = client.post("/v1/embeddings", json={"model": model, "input": [TEXTS[1], data_url]})
    assert openai.status_code == 200, openai.text
    vectors = [row["embedding"] for row in openai.json()["data"]]
    assert cosines(vectors, [reference.texts(TEXTS[1:2])[0], reference.images(photos[:1])[0]]).min() >= 0.999

    shot = client.post("/zero-shot", json={"images": [base64.b64encode(b).decode() for b in photos], "classes": CLASSES,
                                           "templates": ["{}"], "model": model})
    assert shot.status_code == 200, shot.text
    assert shot.json()["normalization"] == "none"  # an imported CLIP has no query bank
    logits = reference.logit_scale * unit(reference.images(photos)) @ unit(reference.texts(CLASSES)).T  # (B, C)
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    for row, result in enumerate(shot.json()["results"]):
        got = {label["label"]: label["probability"] for label in result["labels"]}
        np.testing.assert_allclose([got[c] for c in CLASSES], expected[row], atol=2e-3)


def test_a_transformers_clip_serves_what_transformers_computes(hf_clip_artifacts: Path, hf_reference, photos):
    with served(hf_clip_artifacts) as client:
        check_served_answers(client, "hf-clip", hf_reference, photos)


def test_an_open_clip_serves_what_open_clip_computes(open_clip_artifacts: Path, open_clip_reference, photos):
    with served(open_clip_artifacts) as client:
        check_served_answers(client, "open-clip", open_clip_reference, photos)


def test_the_manifest_is_a_clip_bundle_with_the_checks_figures(hf_clip_artifacts: Path, hf_reference):
    manifest = open_bundle(hf_clip_artifacts, "hf-clip").manifest
    assert (manifest.kind, manifest.method, manifest.dim, manifest.normalized) == ("image-text-encoder", "clip", 16, True)
    assert manifest.logit_scale == pytest.approx(hf_reference.logit_scale)
    assert manifest.tokenizer.context_length == 77 and manifest.query_bank is None
    spec = manifest.preprocessing
    assert (spec.resize, spec.crop, spec.interpolation, spec.crop_offset) == (32, 32, "bicubic", "floor")
    assert min(manifest.extra["parity_min_cosine"].values()) >= 0.9999
    pixels = manifest.extra["preprocessing_parity"]
    assert len(pixels["photos"]) == 3 and pixels["min_cosine"] >= 0.995
    assert manifest.training_config["text_pooling"] == "eos" and manifest.schema_version == 3


def test_the_int8_copies_are_scored_and_auto_serves_them_only_where_they_pass(hf_clip_artifacts: Path):
    bundle = open_bundle(hf_clip_artifacts, "hf-clip")
    assert {(v.role, v.precision) for v in bundle.manifest.variants} == {("image_encoder", "int8"), ("text_encoder", "int8")}
    text = bundle.manifest.variant("text_encoder", "int8")
    assert text.fp32_top1_pct == 100.0 and text.top1_pct is not None  # zero-shot agreement with fp32's own answers
    for variant in bundle.manifest.variants:
        assert variant.min_cosine > 0.99
        auto = load_encoder(bundle, RuntimeConfig(precision="auto", execution_providers="CPUExecutionProvider"),
                            role=variant.role)
        assert auto.precision == ("int8" if variant.cpu_speedup >= 1.0 else "fp32")  # export timed it; auto reads that


def test_a_legacy_config_with_pytorch_weights_and_vocab_files(tmp_path: Path, clip_photos: list, photos):
    # eos_token_id 2: the configs written before transformers #24777, pooled at the highest token id
    folder = write_transformers_clip(tmp_path / "legacy", weights="bin", tokenizer="vocab.json", eos_token_id=2, seed=1)
    assert read_clip_folder(folder).weights.name == "pytorch_model.bin"
    bundle = import_clip(folder, tmp_path / "artifacts", "legacy", photos=clip_photos, int8=False)
    assert bundle.manifest.training_config["text_pooling"] == "argmax"
    with served(tmp_path / "artifacts") as client:
        check_served_answers(client, "legacy", TransformersReference(folder), photos)


def test_an_open_clip_saved_as_a_pytorch_bin_pooling_at_its_eos_id_imports(tmp_path: Path, clip_photos: list):
    # pooled at the first "a" (id 320), not at the end token that argmax finds: the two poolings differ
    cfg = {**OPEN_CLIP_CFG, "text_cfg": {**OPEN_CLIP_CFG["text_cfg"], "pool_type": "eos", "eos_id": 320}}
    folder = write_open_clip(tmp_path / "bin", weights="bin", seed=2, model_cfg=cfg)
    bundle = import_clip(folder, tmp_path / "artifacts", "oc", photos=clip_photos[:1], int8=False)
    assert bundle.manifest.training_config["weights"] == "open_clip_pytorch_model.bin"
    assert (bundle.manifest.training_config["text_pooling"], bundle.manifest.training_config["eos_token_id"]) == ("eos", 320)
    with served(tmp_path / "artifacts") as client:
        texts = client.post("/embed/text", json={"texts": TEXTS, "model": "oc"})
        assert cosines(texts.json()["embeddings"], OpenClipReference(folder).texts(TEXTS)).min() >= 0.9999
    spec = bundle.manifest.preprocessing
    assert (spec.crop_offset, spec.alpha) == ("round", "drop")  # torchvision's CenterCrop; RGB conversion after it


def _without(folder: Path, tmp_path: Path, *names: str) -> Path:
    copy = Path(shutil.copytree(folder, tmp_path / "copy"))
    for name in names:
        (copy / name).unlink()
    return copy


def _edit_json(folder: Path, name: str, edit) -> Path:
    data = json.loads((folder / name).read_text())
    edit(data)
    (folder / name).write_text(json.dumps(data))
    return folder


@pytest.mark.parametrize("remove, message", [
    (("model.safetensors",), r"model\.safetensors is missing .*the weights"),
    (("tokenizer.json",), r"tokenizer\.json is missing .*vocab\.json and merges\.txt"),
    (("preprocessor_config.json",), r"preprocessor_config\.json is missing"),
    (("config.json",), r"config\.json is missing"),
])
def test_a_folder_missing_a_file_is_refused_naming_it(hf_clip_folder: Path, tmp_path: Path, capsys, remove, message):
    folder = _without(hf_clip_folder, tmp_path, *remove)
    with pytest.raises(FolderError, match=message):
        read_clip_folder(folder)
    assert main(["import", "clip", str(folder), "--name", "x", "--artifacts", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and remove[0] in err
    assert not (tmp_path / "a" / "models").exists()


@pytest.mark.parametrize("file, edit, message", [
    ("config.json", lambda c: c.update(model_type="siglip"), "model_type 'siglip' is not supported"),
    ("preprocessor_config.json", lambda c: c.update(size={"height": 32, "width": 40}), "size .* is not supported"),
    ("preprocessor_config.json", lambda c: c.update(resample=0), "resample 0 is not supported"),
    ("preprocessor_config.json", lambda c: c.update(do_center_crop=False), "do_center_crop must be true"),
])
def test_a_transformers_folder_with_what_the_importer_does_not_reproduce_is_refused(hf_clip_folder: Path, tmp_path: Path,
                                                                                     file, edit, message):
    folder = _edit_json(_without(hf_clip_folder, tmp_path), file, edit)
    with pytest.raises(FolderError, match=message):
        read_clip_folder(folder)


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["model_cfg"]["text_cfg"].update(hf_model_name="bert-base-uncased"), "text_cfg.hf_model_name"),
    (lambda c: c["model_cfg"]["text_cfg"].update(pool_type="last"), "pool_type 'last' is not supported"),
    (lambda c: c["preprocess_cfg"].update(resize_mode="squash"), "resize_mode 'squash' is not supported"),
])
def test_an_open_clip_folder_with_what_the_importer_does_not_reproduce_is_refused(open_clip_folder: Path, tmp_path: Path,
                                                                                   edit, message):
    folder = _edit_json(_without(open_clip_folder, tmp_path), "open_clip_config.json", edit)
    with pytest.raises(FolderError, match=message):
        read_clip_folder(folder)


def test_an_open_clip_folder_without_weights_is_refused(open_clip_folder: Path, tmp_path: Path):
    # open_clip itself would build the model with random weights and only log a warning
    folder = _without(open_clip_folder, tmp_path, "open_clip_model.safetensors")
    with pytest.raises(FolderError, match=r"open_clip_model\.safetensors is missing .*open_clip_pytorch_model\.bin"):
        read_clip_folder(folder)


def test_an_import_that_disagrees_with_the_library_writes_nothing(hf_clip_folder: Path, tmp_path: Path, monkeypatch,
                                                                  clip_photos: list):
    # a tokenizer whose context is 8 tokens where the model reads 77: the long texts' ids differ
    from export import clip_tokenizer

    real = clip_tokenizer.bundle_tokenizer

    def short(folder, bpe_file=None):
        return real(read_clip_folder(folder.path).__class__(**{**folder.__dict__, "context_length": 8}), bpe_file)

    monkeypatch.setattr(clip_import, "bundle_tokenizer", short)
    with pytest.raises(ParityError, match="text tower disagrees"):
        import_clip(hf_clip_folder, tmp_path, "bad", photos=clip_photos[:1], int8=False)
    assert not (tmp_path / "models").exists()


def test_a_job_indexes_photos_with_it_and_search_by_text_and_explain_serve_it(hf_clip_artifacts: Path, hf_reference,
                                                                             tmp_path: Path):
    from tests.jobs import wait_for_job

    artifacts = Path(shutil.copytree(hf_clip_artifacts, tmp_path / "artifacts"))
    folder = tmp_path / "data" / "photos"
    blobs = [photo_png(folder, f"{i}.png", size, mode).read_bytes()
             for i, (size, mode) in enumerate([((60, 40), "RGB"), ((40, 70), "L"), ((50, 50), "RGBA")])]
    settings = Settings(artifacts_dir=artifacts, data_roots=str(tmp_path / "data"), precision="fp32", max_wait_ms=1)
    with TestClient(create_app(settings)) as client:
        job = client.post("/jobs", json={"source": str(folder), "model": "hf-clip", "index": "photos"})
        assert job.status_code == 202, job.text
        assert wait_for_job(client, job.json()["id"])["state"] == "succeeded"
        hits = client.post("/search", json={"index": "photos", "text": "a dog", "k": 3})
        assert hits.status_code == 200, hits.text
        expected = unit(hf_reference.images(blobs)) @ unit(hf_reference.texts(["a dog"]))[0]  # (3,)
        got = {hit["metadata"]["path"]: hit["score"] for hit in hits.json()["hits"]}
        np.testing.assert_allclose([got[f"{i}.png"] for i in range(3)], expected, atol=2e-3)
        shown = client.post("/explain", json={"image": base64.b64encode(blobs[0]).decode(), "label": "a dog",
                                              "classes": ["a dog", "a cat"], "model": "hf-clip", "grid": 2})
        assert shown.status_code == 200, shown.text
        assert np.array(shown.json()["grid"]).shape == (2, 2)


def test_a_query_bank_from_an_image_folder_makes_querybank_zero_shot_the_default(hf_clip_folder: Path, tmp_path: Path,
                                                                                clip_photos: list, photos):
    folder = tmp_path / "bank"
    for i in range(4):
        photo_png(folder, f"{i}.png", (40 + 7 * i, 30 + 5 * i), seed=i)
    bundle = import_clip(hf_clip_folder, tmp_path / "artifacts", "banked", photos=clip_photos[:1], int8=False,
                         query_bank=folder)
    assert bundle.manifest.query_bank.images == 4 and np.load(bundle.file("query_bank")).shape == (4, 16)
    with served(tmp_path / "artifacts") as client:
        shot = client.post("/zero-shot", json={"images": [base64.b64encode(photos[0]).decode()], "classes": CLASSES})
        assert shot.status_code == 200 and shot.json()["normalization"] == "querybank"


def test_the_command_line_imports_an_open_clip_folder(open_clip_folder: Path, tmp_path: Path, capsys):
    assert main(["import", "clip", str(open_clip_folder), "--name", "cli", "--artifacts", str(tmp_path), "--no-int8"]) == 0
    assert "wrote" in capsys.readouterr().out
    manifest = open_bundle(tmp_path, "cli").manifest
    assert manifest.training_config["source"] == "open_clip" and manifest.variants == ()


class _Payload:
    """What a hostile pytorch_model.bin carries: unpickling it would call a function of its choice
    (here: create the file `marker`)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("library", ["transformers", "open_clip"])
def test_a_pytorch_bin_is_read_weights_only_so_a_pickled_payload_is_refused(tmp_path: Path, library: str):
    if library == "transformers":
        folder = write_transformers_clip(tmp_path / "bin", weights="bin")
        weights = folder / "pytorch_model.bin"
    else:
        folder = write_open_clip(tmp_path / "bin", weights="bin")
        weights = folder / "open_clip_pytorch_model.bin"
    torch.save({"payload": _Payload(tmp_path / "unpickled")}, weights)
    with pytest.raises(FolderError, match="cannot load"):
        import_clip(folder, tmp_path / "artifacts", "bad", photos=[], int8=False)
    assert not (tmp_path / "unpickled").exists() and not (tmp_path / "artifacts" / "models").exists()
