from pathlib import Path

import numpy as np
import pytest
import torch

from embedserve.pipelines import export_checkpoint
from runtime.bundle import OnnxIO, QueryBankSpec, TokenizerSpec, open_bundle, read_bundle
from export.clip import export_clip
from runtime.tokens import encode_batch, load_tokenizer
from runtime.encoders.onnx_runtime import OnnxEncoder
from runtime.fashion_mnist import load_fashion_mnist
from training.data.images import to_pil
from training.data.transforms import EvalTransform
from training.methods.clip import load_clip_towers

TEXTS = ["a sneaker", "A Photo Of A DRESS.", "ein Kleid für den Sommer", "une chaussure à lacets, 日本の靴",
         "a photo of a t-shirt, a kind of top, with short sleeves, a round collar and a small pocket on the left",
         "", "   "]


@pytest.fixture(scope="module")
def exported(clip_checkpoint: Path, tmp_path_factory):
    artifacts = tmp_path_factory.mktemp("artifacts")
    return export_clip(clip_checkpoint, artifacts, "clip", metrics={"zero_shot_top1": 0.5}), clip_checkpoint


def test_bundle_round_trip_has_both_towers_tokenizer_and_clip_facts(exported):
    bundle, checkpoint = exported
    manifest = read_bundle(bundle.path, verify=True).manifest
    _, _, info = load_clip_towers(str(checkpoint))
    assert (manifest.kind, manifest.method, manifest.dim, manifest.normalized) == ("image-text-encoder", "clip", info.dim, True)
    assert manifest.files == {"image_encoder": "image_encoder.onnx", "text_encoder": "text_encoder.onnx",
                              "tokenizer": "tokenizer.json", "query_bank": "query_bank.npy",
                              **{f"{tower}_{p}": f"{tower}.{p}.onnx" for tower in ("image_encoder", "text_encoder")
                                 for p in ("int8", "fp16")}}
    assert manifest.preprocessing == info.preprocessing
    assert manifest.tokenizer == TokenizerSpec(file="tokenizer.json", context_length=info.context_length)
    assert manifest.logit_scale == pytest.approx(info.logit_scale)
    assert manifest.class_names == (info.class_names or ())
    assert manifest.onnx_io("text_encoder") == OnnxIO(("ids", "attention_mask"), "embeddings")
    assert manifest.onnx_io("image_encoder") == OnnxIO(("images",), "embeddings")
    assert min(manifest.extra["parity_min_cosine"].values()) >= 0.9999
    assert manifest.metrics == {"zero_shot_top1": 0.5} and manifest.source_checkpoint_sha256
    assert open_bundle(bundle.path.parents[2], "clip").path == bundle.path  # made current


def test_both_towers_have_int8_and_fp16_variants_scored_against_fp32(exported):
    bundle, _ = exported
    manifest = read_bundle(bundle.path, verify=True).manifest  # the variant files are hashed and verified too
    techniques = {(v.role, v.precision): v.technique for v in manifest.variants}
    assert techniques == {("image_encoder", "int8"): "static-qdq", ("image_encoder", "fp16"): "float16",
                          ("text_encoder", "int8"): "dynamic-rowwise", ("text_encoder", "fp16"): "float16"}
    text_int8 = manifest.variant("text_encoder", "int8")
    # the tiny training split has no test split: held-out training images, classified zero-shot by the class prompts
    assert "zero-shot top-1" in text_int8.evaluation and "held-out fashion-mnist training" in text_int8.evaluation
    assert text_int8.top1_change_pct == pytest.approx(text_int8.top1_pct - text_int8.fp32_top1_pct, abs=1e-3)
    assert "kNN top-1" in manifest.variant("image_encoder", "int8").evaluation
    assert all(0.9 < v.mean_cosine <= 1.0 for v in manifest.variants)
    ids, mask = encode_batch(load_tokenizer(bundle.path / "tokenizer.json"), TEXTS)
    tokens = np.stack([ids, mask], axis=1)  # (N, 2, T)
    fp32 = OnnxEncoder(bundle, "text_encoder", "cpu").encode(tokens)
    int8 = OnnxEncoder(bundle, "text_encoder", "cpu", file_role=text_int8.file_role, precision="int8").encode(tokens)
    assert int8.shape == fp32.shape and float((int8 * fp32).sum(1).min()) > 0.9  # unit rows, close to fp32's


def test_the_query_bank_holds_the_training_images_embeddings(exported):
    bundle, checkpoint = exported
    image_tower, _, info = load_clip_towers(str(checkpoint))
    # The tiny training split has CLIP_TRAIN_IMAGES (60) images, fewer than the 2048 asked for: the bank takes
    # them all, in order, embedded by the torch image tower after the bundle's own preprocessing.
    images, _ = load_fashion_mnist(info.config["data_root"], "train")
    transform = EvalTransform(28, "L", info.preprocessing.mean, info.preprocessing.std)
    with torch.no_grad():
        expected = image_tower(torch.stack([transform(to_pil(image)) for image in images])).numpy()  # (60, D)

    bank = np.load(bundle.file("query_bank"))
    assert bank.shape == (60, info.dim) and bank.dtype == np.float32
    np.testing.assert_allclose(bank, expected, rtol=1e-4, atol=1e-6)
    assert bundle.manifest.query_bank == QueryBankSpec(images=60, k=10, seed=0, source="random training images of fashion-mnist")


def test_a_checkpoint_whose_data_is_gone_exports_without_a_query_bank(write_clip_checkpoint, tmp_path: Path, caplog):
    checkpoint = write_clip_checkpoint(tmp_path / "clip.pt", data_root=tmp_path / "gone")
    bundle = export_clip(checkpoint, tmp_path / "artifacts", "clip")
    assert "query_bank" not in bundle.manifest.files and bundle.manifest.query_bank is None
    assert not (bundle.path / "query_bank.npy").exists()
    assert "without a zero-shot query bank" in caplog.text and "gone" in caplog.text  # says why


def test_both_onnx_towers_reproduce_the_torch_towers(exported):
    bundle, checkpoint = exported
    image_tower, text_tower, info = load_clip_towers(str(checkpoint))
    spec = info.preprocessing
    images = torch.randn(5, spec.channels, spec.crop, spec.crop)  # (B, C, H, W)
    ids, mask = encode_batch(load_tokenizer(bundle.file("tokenizer")), TEXTS)  # (N, T) each
    with torch.no_grad():
        expected_images = image_tower(images).numpy()  # (B, D)
        expected_texts = text_tower(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()  # (N, D)

    got_images = OnnxEncoder(bundle, "image_encoder", "cpu").encode(images.numpy())
    got_texts = OnnxEncoder(bundle, "text_encoder", "cpu").encode(np.stack([ids, mask], axis=1))  # (N, 2, T)
    np.testing.assert_allclose(got_images, expected_images, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(got_texts, expected_texts, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got_texts, axis=1), 1.0, atol=1e-5)  # the towers normalise


def test_the_bundled_tokenizer_gives_the_ids_training_gave(exported):
    bundle, checkpoint = exported
    _, _, info = load_clip_towers(str(checkpoint))
    serving_ids, serving_mask = encode_batch(load_tokenizer(bundle.file("tokenizer")), TEXTS)
    training_ids, training_mask = encode_batch(load_tokenizer(info.tokenizer_json), TEXTS)
    np.testing.assert_array_equal(serving_ids, training_ids)
    np.testing.assert_array_equal(serving_mask, training_mask)
    assert serving_ids.shape == (len(TEXTS), info.context_length)
    assert serving_mask[4].all()  # the long caption fills the context (it is truncated)
    assert (serving_ids[2] != serving_ids[3]).any()  # non-ASCII texts still tokenise to different ids


def test_export_checkpoint_dispatches_clip(clip_checkpoint: Path, tmp_path: Path):
    bundle = export_checkpoint(clip_checkpoint, tmp_path, "clip")
    assert bundle.manifest.kind == "image-text-encoder" and bundle.manifest.version == "v1"
