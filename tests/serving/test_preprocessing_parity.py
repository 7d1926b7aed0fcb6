"""The serving path must compute what training's eval path computes, image for image:
file bytes -> decode_image -> preprocess_batch -> ONNX (serving) against
Image.open -> EvalTransform -> torch encoder (training), on real PNG and JPEG files."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from export.image_encoder import export_image_encoder
from runtime.bundle import read_bundle
from runtime.config import RuntimeConfig
from runtime.encoders.factory import load_encoder
from runtime.preprocessing import decode_image, preprocess_batch
from runtime.vectors import rowwise_cosine
from training.checkpoint import save_checkpoint
from training.data.transforms import EvalTransform, preprocessing_spec
from training.methods.encoders import load_image_encoder
from training.methods.simclr import SimCLR, SimCLRConfig

IMAGE_SIZE, RESIZE = 16, 20  # resize != crop, so the centre crop is exercised too
MEANS = {"RGB": (0.49, 0.48, 0.45), "L": (0.29,)}
STDS = {"RGB": (0.25, 0.24, 0.26), "L": (0.35,)}


def _photo_like(width: int, height: int, seed: int) -> np.ndarray:
    """Smooth gradients plus noise (H, W, 3) uint8: structure the resize really has to interpolate."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x / width, y / height, (x + y) / (width + height)], axis=-1) * 200  # (H, W, 3)
    return np.clip(base + rng.normal(0, 25, (height, width, 3)), 0, 255).astype(np.uint8)


def _write_images(folder: Path) -> list[Path]:
    """PNG and JPEG files of varied sizes, aspect ratios and pixel modes."""
    cases = [
        ("rgb.png", "RGB", (37, 23), {}),
        ("rgb.jpg", "RGB", (64, 50), {"quality": 90}),
        ("grey.png", "L", (20, 31), {}),
        ("grey.jpg", "L", (48, 48), {}),
        ("alpha.png", "RGBA", (40, 28), {}),
        ("palette.png", "P", (25, 60), {}),
        ("small.png", "RGB", (9, 12), {}),  # smaller than the crop: upsampled
    ]
    paths = []
    for i, (name, mode, (width, height), params) in enumerate(cases):
        img = Image.fromarray(_photo_like(width, height, seed=i))
        if mode == "RGBA":
            img.putalpha(Image.fromarray(np.linspace(0, 255, width * height).reshape(height, width).astype(np.uint8)))
        elif mode != "RGB":
            img = img.convert(mode)
        img.save(folder / name, **params)
        paths.append(folder / name)
    return paths


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_serving_path_matches_training_eval_path(tmp_path: Path, mode: str):
    torch.manual_seed(0)
    method = SimCLR(SimCLRConfig(width=4, image_size=IMAGE_SIZE, mode=mode, mean=MEANS[mode], std=STDS[mode],
                                 proj_hidden_dim=16, proj_dim=8))
    spec = preprocessing_spec(IMAGE_SIZE, mode, MEANS[mode], STDS[mode], resize=RESIZE)
    checkpoint = tmp_path / "simclr.pt"
    save_checkpoint(checkpoint, {"method": method.name, "model": method.model.state_dict(),
                                 **method.checkpoint_extra(), "preprocessing": spec.to_dict()})
    # centering_images=0: the raw encoder, so the served vectors compare with the torch module's own;
    # fp32 only, as an int8 copy would be served on CPU by default
    bundle = read_bundle(export_image_encoder(checkpoint, tmp_path / "artifacts", "vision", centering_images=0,
                                              int8=False, fp16=False).path)
    paths = _write_images(tmp_path)

    # serving: bytes -> PIL -> numpy -> onnxruntime, configured only by the manifest
    images = [decode_image(p.read_bytes()) for p in paths]
    served_inputs = preprocess_batch(images, bundle.manifest.preprocessing)  # (B, C, 16, 16)
    served = load_encoder(bundle, RuntimeConfig(execution_providers="cpu")).encode(served_inputs)  # (B, D)

    # training: Image.open -> EvalTransform (torchvision) -> torch encoder
    module, _ = load_image_encoder(checkpoint)
    transform = EvalTransform(IMAGE_SIZE, mode, MEANS[mode], STDS[mode], resize=RESIZE)
    reference_inputs = torch.stack([transform(Image.open(p)) for p in paths])  # (B, C, 16, 16)
    with torch.no_grad():
        reference = module(reference_inputs).numpy()  # (B, D)

    assert served_inputs.shape == tuple(reference_inputs.shape)
    np.testing.assert_allclose(served_inputs, reference_inputs.numpy(), atol=1e-5)  # same pixels in, before the model
    cosines = rowwise_cosine(served, reference)
    assert cosines.min() >= 0.999, dict(zip((p.name for p in paths), cosines.round(5)))
