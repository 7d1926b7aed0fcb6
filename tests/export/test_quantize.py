from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from export.onnx import export_onnx
from export.quantize import (LabelledImages, image_encoder_variants, int8_technique, quantize_rowwise_int8,
                             quantize_static_int8, run_batched, zero_shot_top1)


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(16, 8)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))  # (B, 8)


def _cnn(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return export_onnx(SmallCNN(), torch.randn(2, 1, 12, 12), tmp_path / "cnn.onnx")


def _two_blobs(seed: int = 0, per_class: int = 40) -> LabelledImages:
    """Bright and dark noise images: two classes any encoder tells apart."""
    rng = np.random.default_rng(seed)

    def images(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.arange(n) % 2
        x = rng.normal(size=(n, 1, 12, 12)).astype(np.float32) * 0.3 + np.where(labels, 1.0, -1.0)[:, None, None, None]
        return x.astype(np.float32), labels.astype(np.int64)

    (rx, ry), (qx, qy) = images(2 * per_class), images(per_class)
    return LabelledImages(rx, ry, qx, qy, "two blobs")


def test_static_int8_quantises_the_convolutions_and_leaves_the_last_matmul_float(tmp_path: Path):
    fp32 = _cnn(tmp_path)
    calibration = _two_blobs().references
    int8 = quantize_static_int8(fp32, tmp_path / "cnn.int8.onnx", "images", calibration)
    nodes = onnx.load(str(int8)).graph.node
    dequantized = {o for n in nodes if n.op_type == "DequantizeLinear" for o in n.output}
    quantized_convs = [n for n in nodes if n.op_type == "Conv" and {n.input[0], n.input[1]} <= dequantized]
    head = [n for n in nodes if n.op_type in ("Gemm", "MatMul")]
    assert len(quantized_convs) == 2  # int8 activations and weights, fused into QLinearConv by onnxruntime
    assert head and not any(i in dequantized for n in head for i in n.input)  # the head runs on float inputs and weights
    out, ref = run_batched(int8, [calibration]), run_batched(fp32, [calibration])
    cosine = (out * ref).sum(1) / np.linalg.norm(out, axis=1) / np.linalg.norm(ref, axis=1)
    assert cosine.min() > 0.98


def test_image_variants_record_the_top1_change_measured_on_the_same_images(tmp_path: Path):
    fp32, data = _cnn(tmp_path), _two_blobs()
    written = image_encoder_variants(fp32, "image_encoder", "images", ["int8", "fp16"], data.references, data, data.queries)
    by_precision = {w.variant.precision: w for w in written}
    assert sorted(by_precision) == ["fp16", "int8"] and (tmp_path / by_precision["int8"].file).is_file()
    int8 = by_precision["int8"].variant
    assert (int8.file_role, int8.technique, int8.calibration_images) == ("image_encoder_int8", "static-qdq", 80)
    assert int8.fp32_top1_pct == by_precision["fp16"].variant.fp32_top1_pct  # one fp32 figure for both
    assert int8.top1_change_pct == round(int8.top1_pct - int8.fp32_top1_pct, 3)


class SmallBlock(nn.Module):
    """Q, K and V from one input, as in attention, then a projection (a Gemm: its input is 2-D):
    four weight products on two activations."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.norm, self.q, self.k, self.v = nn.LayerNorm(width), nn.Linear(width, width), nn.Linear(width, width), nn.Linear(width, width)
        self.out = nn.Linear(width, 16)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, T, width) -> (B, 16)
        x = self.norm(tokens)
        mixed = torch.softmax(self.q(x) @ self.k(x).transpose(1, 2), dim=-1) @ self.v(x)  # (B, T, width)
        return self.out(mixed.mean(dim=1) + torch.relu(x).mean(dim=1))


def _matmul_model(tmp_path: Path, weights: np.ndarray) -> Path:
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "one-matmul",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", weights.shape[0]])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", weights.shape[1]])],
                              [numpy_helper.from_array(weights, "W")])
    path = tmp_path / "matmul.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_rowwise_int8_scales_each_row_by_its_own_largest_value(tmp_path: Path):
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(24, 8)).astype(np.float32)
    int8 = quantize_rowwise_int8(_matmul_model(tmp_path, weights), tmp_path / "matmul.int8.onnx")
    x = np.concatenate([rng.normal(size=(3, 24)), 1000 * rng.normal(size=(2, 24)), np.zeros((1, 24))]).astype(np.float32)
    # by hand: weights per column and each row by its largest magnitude, symmetric, to 127 levels
    column = np.abs(weights).max(axis=0) / 127
    row = np.abs(x).max(axis=1, keepdims=True) / 127
    expected = (np.round(x / np.maximum(row, 1e-30)) @ np.round(weights / column)) * column * row
    got = run_batched(int8, [x])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert not got[-1].any()  # an all-zero row stays zero
    np.testing.assert_allclose(run_batched(int8, [x[:1]]), got[:1], rtol=1e-6)  # its loud neighbours changed nothing


def test_rowwise_int8_quantises_every_weight_matmul_and_each_activation_once(tmp_path: Path):
    torch.manual_seed(0)
    fp32 = export_onnx(SmallBlock(), torch.randn(2, 5, 32), tmp_path / "block.onnx", "tokens",
                       more_dynamic_axes={"tokens": {1: "sequence"}})
    int8 = quantize_rowwise_int8(fp32, tmp_path / "block.int8.onnx")
    ops = [n.op_type for n in onnx.load(str(int8)).graph.node]
    assert ops.count("MatMulIntegerToFloat") == 4 and ops.count("QuantizeLinear") == 2  # Q, K, V share one input
    assert ops.count("MatMul") == 2  # QK^T and the product with V: activations by activations stay float
    tokens = np.random.default_rng(1).normal(size=(6, 9, 32)).astype(np.float32)
    out, ref = run_batched(int8, [tokens]), run_batched(fp32, [tokens])
    assert ((out * ref).sum(1) / np.linalg.norm(out, axis=1) / np.linalg.norm(ref, axis=1)).min() > 0.999


def test_rowwise_int8_refuses_a_model_without_weights_to_quantise(tmp_path: Path):
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "relu.onnx"))
    with pytest.raises(ValueError, match="no MatMul or Gemm by a weight matrix"):
        quantize_rowwise_int8(tmp_path / "relu.onnx", tmp_path / "relu.int8.onnx")
    assert not (tmp_path / "relu.int8.onnx").exists()


def test_a_vit_is_quantised_dynamically_and_a_cnn_statically():
    assert (int8_technique("vit"), int8_technique("resnet")) == ("dynamic-rowwise", "static-qdq")


def test_zero_shot_top1_takes_the_class_whose_prompts_are_nearest():
    prompts = [["a cat", "cat photo"], ["a dog", "dog photo"]]
    vectors = {"a cat": [1, 0.1], "cat photo": [1, -0.1], "a dog": [0.1, 1], "dog photo": [-0.1, 1]}

    def embed(texts: list[str]) -> np.ndarray:
        return np.array([vectors[t] for t in texts], np.float32)

    images = np.array([[1, 0], [0, 1], [0.9, 0.2], [0.2, 0.9]], np.float32)
    assert zero_shot_top1(images, np.array([0, 1, 0, 1]), prompts, embed) == 100.0
    assert zero_shot_top1(images, np.array([1, 1, 0, 0]), prompts, embed) == 50.0


def test_calibration_reads_a_manifest_as_the_query_bank_does(tmp_path: Path):
    from PIL import Image

    from export.quantize import calibration_images
    from runtime.preprocessing import PreprocessingSpec

    (tmp_path / "pics").mkdir()
    rows = ["path,caption,category"]
    for n in range(12):
        Image.new("RGB", (20, 16), (20 * n, 100, 200)).save(tmp_path / "pics" / f"{n}.png")
        rows.append(f"pics/{n}.png,a drawing of thing {n},{'warm' if n % 2 else 'cool'}")
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    spec = PreprocessingSpec(mode="RGB", resize=8, crop=8, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    config = {"data": str(tmp_path / "train.csv"), "held_out_fraction": 0.0}  # a CLIP checkpoint's, trained on it
    images = calibration_images(config, spec, count=5)
    assert images is not None and images.shape == (5, 3, 8, 8) and images.dtype == np.float32
