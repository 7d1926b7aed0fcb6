import logging
from pathlib import Path

import numpy as np
import onnx
import pytest

from runtime.bundle import Manifest, PrecisionVariant, read_bundle
from runtime.config import RuntimeConfig
from runtime.encoders.factory import choose_precision, load_encoder

CPU = ["CPUExecutionProvider"]
CUDA = ["CUDAExecutionProvider", "CPUExecutionProvider"]
TENSORRT = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def _manifest(int8_change: float | None = -0.4, int8_mean_cosine: float | None = 0.999, fp16: bool = True,
              int8_speedup: float | None = None) -> Manifest:
    variants = [PrecisionVariant("image_encoder", "int8", "image_encoder_int8", "static-qdq",
                                 top1_change_pct=int8_change, mean_cosine=int8_mean_cosine, cpu_speedup=int8_speedup)]
    if fp16:
        variants.append(PrecisionVariant("image_encoder", "fp16", "image_encoder_fp16", "float16", mean_cosine=1.0))
    files = {"image_encoder": "e.onnx", **{v.file_role: f"e.{v.precision}.onnx" for v in variants}}
    return Manifest(name="m", kind="image-encoder", method="simclr", dim=4, normalized=True, files=files,
                    variants=tuple(variants))


@pytest.mark.parametrize("providers, expected", [(CPU, "int8"), (CUDA, "fp16"), (TENSORRT, "fp16")])
def test_auto_takes_int8_on_cpu_and_fp16_on_a_gpu(providers, expected):
    choice = choose_precision(_manifest(), "image_encoder", "auto", providers)
    assert (choice.precision, choice.file_role) == (expected, f"image_encoder_{expected}")


@pytest.mark.parametrize("change, mean_cosine", [(-1.5, 0.999), (None, 0.95), (None, None)])
def test_auto_keeps_fp32_when_int8_lost_too_much_or_was_not_measured(change, mean_cosine):
    choice = choose_precision(_manifest(change, mean_cosine), "image_encoder", "auto", CPU)
    assert (choice.precision, choice.file_role) == ("fp32", "image_encoder")


def test_auto_takes_int8_without_top1_when_its_outputs_match_fp32():
    assert choose_precision(_manifest(None, 0.995), "image_encoder", "auto", CPU).precision == "int8"


def test_auto_keeps_fp32_where_export_timed_int8_slower_but_int8_is_still_there_when_asked():
    choice = choose_precision(_manifest(int8_speedup=0.69), "image_encoder", "auto", CPU)
    assert choice.precision == "fp32" and "0.69x" in choice.reason
    assert choose_precision(_manifest(int8_speedup=0.69), "image_encoder", "int8", CPU).precision == "int8"
    assert choose_precision(_manifest(int8_speedup=1.4), "image_encoder", "auto", CPU).precision == "int8"


def test_the_int8_bound_is_a_setting():
    assert choose_precision(_manifest(-1.5), "image_encoder", "auto", CPU, max_top1_drop_pct=2.0).precision == "int8"


def test_an_explicit_precision_is_taken_even_where_auto_would_not():
    assert choose_precision(_manifest(-5.0), "image_encoder", "int8", CUDA).precision == "int8"
    assert choose_precision(_manifest(), "image_encoder", "fp16", CPU).precision == "fp16"
    assert choose_precision(_manifest(), "image_encoder", "fp32", CUDA).precision == "fp32"


def test_a_bundle_without_the_variant_asked_runs_fp32():
    assert choose_precision(_manifest(fp16=False), "image_encoder", "fp16", CUDA).file_role == "image_encoder"
    assert choose_precision(_manifest(fp16=False), "image_encoder", "auto", CUDA).precision == "fp32"
    assert choose_precision(_manifest(), "text_encoder", "int8", CPU).file_role == "text_encoder"  # variants are per role


def test_a_bundle_from_before_variants_runs_fp32_everywhere():
    old = Manifest(name="m", kind="image-encoder", method="simclr", dim=4, normalized=True, files={"image_encoder": "e.onnx"})
    for asked in ("auto", "int8", "fp16"):
        assert choose_precision(old, "image_encoder", asked, CUDA).precision == "fp32"


def test_an_older_fp16_copy_counts_as_the_fp16_variant():
    data = {"schema_version": 2, "name": "m", "kind": "image-encoder", "method": "simclr", "dim": 4, "normalized": False,
            "files": {"image_encoder": "e.onnx", "image_encoder_fp16": "e.fp16.onnx"}, "extra": {"fp16_parity_min_cosine": 0.999}}
    manifest = Manifest.from_dict(data)
    assert manifest.variant("image_encoder", "fp16") == PrecisionVariant(
        "image_encoder", "fp16", "image_encoder_fp16", "float16", min_cosine=0.999)
    assert choose_precision(manifest, "image_encoder", "auto", CUDA).file_role == "image_encoder_fp16"


@pytest.mark.parametrize("precision, expected", [("int8", "int8"), ("fp16", "fp16"), ("fp32", "fp32"), ("auto", "int8")])
def test_load_encoder_runs_the_file_of_the_precision_chosen(tmp_path: Path, write_variant_bundle, precision, expected):
    bundle = read_bundle(write_variant_bundle(tmp_path), verify=True)  # variant files are hashed like the others
    encoder = load_encoder(bundle, RuntimeConfig(execution_providers="cpu", precision=precision))
    assert encoder.precision == expected
    model = onnx.load(str(encoder.path))
    quantized = any(n.op_type == "MatMulIntegerToFloat" for n in model.graph.node)
    assert quantized == (expected == "int8")
    batch = np.random.default_rng(0).normal(size=(3, 1, 8, 8)).astype(np.float32)
    fp32 = load_encoder(bundle, RuntimeConfig(execution_providers="cpu", precision="fp32")).encode(batch)
    got = encoder.encode(batch)
    assert got.dtype == np.float32 and got.shape == fp32.shape
    cosine = (got * fp32).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(fp32, axis=1)
    assert cosine.min() > 0.99


def test_an_int8_model_embeds_an_item_the_same_whatever_its_batch(tmp_path: Path, write_variant_bundle):
    bundle = read_bundle(write_variant_bundle(tmp_path))  # int8 row by row: each row scaled by its own range
    encoder = load_encoder(bundle, RuntimeConfig(execution_providers="cpu", precision="int8"))
    assert encoder.precision == "int8" and not encoder.one_at_a_time  # it runs batched
    rng = np.random.default_rng(0)
    item = rng.normal(size=(1, 1, 8, 8)).astype(np.float32)
    loud = 50 * rng.normal(size=(7, 1, 8, 8)).astype(np.float32)  # neighbours with a far wider range
    np.testing.assert_allclose(encoder.encode(np.concatenate([item, loud]))[0], encoder.encode(item)[0], rtol=1e-6)


def test_an_older_dynamic_int8_model_runs_each_item_alone(tmp_path: Path, write_variant_bundle):
    # onnxruntime's dynamic quantiser, as export wrote int8 before 2026-12, scales by the whole batch's range
    bundle = read_bundle(write_variant_bundle(tmp_path, int8_technique="dynamic"))
    encoder = load_encoder(bundle, RuntimeConfig(execution_providers="cpu", precision="int8"))
    assert encoder.precision == "int8" and encoder.one_at_a_time
    rng = np.random.default_rng(0)
    item = rng.normal(size=(1, 1, 8, 8)).astype(np.float32)
    loud = 50 * rng.normal(size=(7, 1, 8, 8)).astype(np.float32)
    batch = np.concatenate([item, loud])
    assert not np.allclose(encoder._run([batch])[0], encoder.encode(item)[0], rtol=1e-3)  # batched, it would move
    np.testing.assert_allclose(encoder.encode(batch)[0], encoder.encode(item)[0], atol=1e-6)
    # with two threads, two items run side by side, each alone: the same vectors
    two = load_encoder(bundle, RuntimeConfig(execution_providers="cpu", precision="int8", intra_op_threads=2))
    np.testing.assert_array_equal(two.encode(batch), encoder.encode(batch))


def test_a_missing_variant_falls_back_to_fp32_with_a_log_line(image_artifacts: Path, caplog):
    bundle = read_bundle(image_artifacts / "models" / "tiny" / "v1")
    with caplog.at_level(logging.WARNING, logger="runtime.encoders.factory"):
        encoder = load_encoder(bundle, RuntimeConfig(execution_providers="cpu", precision="int8"))
    assert encoder.precision == "fp32"
    assert "no int8 variant" in caplog.text and "falling back to fp32" in caplog.text


def test_auto_chooses_for_the_provider_that_runs_where_a_listed_gpu_does_not_start(tmp_path: Path, write_variant_bundle,
                                                                                   monkeypatch, caplog):
    # onnxruntime-gpu lists CUDA whether or not its libraries load (a CUDA-13 build on a CUDA-12
    # image does not); this CPU build lists it here and, as there, the session starts without it
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: CUDA)
    bundle = read_bundle(write_variant_bundle(tmp_path))
    with caplog.at_level(logging.WARNING, logger="runtime.encoders.factory"):
        encoder = load_encoder(bundle, RuntimeConfig(execution_providers="auto", precision="auto"))
    assert encoder.providers == CPU
    assert encoder.precision == "int8"  # auto's choice on the CPU, not the fp16 it takes on a GPU
    assert "could not start CUDAExecutionProvider, so it runs on CPUExecutionProvider" in caplog.text
    assert "precision auto for it: int8" in caplog.text


def test_an_unknown_precision_setting_is_refused():
    with pytest.raises(ValueError, match="auto"):
        RuntimeConfig(precision="bf16")
