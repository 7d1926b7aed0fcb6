from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from export.onnx import export_onnx
from export.quantize import (LabelledImages, image_encoder_variants, int8_technique, quantize_static_int8, run_batched,
                             zero_shot_top1)


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


def test_a_vit_is_quantised_dynamically_and_a_cnn_statically():
    assert (int8_technique("vit"), int8_technique("resnet")) == ("dynamic", "static-qdq")


def test_zero_shot_top1_takes_the_class_whose_prompts_are_nearest():
    prompts = [["a cat", "cat photo"], ["a dog", "dog photo"]]
    vectors = {"a cat": [1, 0.1], "cat photo": [1, -0.1], "a dog": [0.1, 1], "dog photo": [-0.1, 1]}

    def embed(texts: list[str]) -> np.ndarray:
        return np.array([vectors[t] for t in texts], np.float32)

    images = np.array([[1, 0], [0, 1], [0.9, 0.2], [0.2, 0.9]], np.float32)
    assert zero_shot_top1(images, np.array([0, 1, 0, 1]), prompts, embed) == 100.0
    assert zero_shot_top1(images, np.array([1, 1, 0, 0]), prompts, embed) == 50.0
