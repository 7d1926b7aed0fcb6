import numpy as np
import torch
from PIL import Image

from training.data.transforms import EvalTransform, MAETransform, SimCLRTransform, preprocessing_spec

MEAN, STD = (0.5,), (0.25,)


def digit() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8), "L")


def test_simclr_gives_two_different_normalised_views():
    torch.manual_seed(0)
    a, b = SimCLRTransform(28, "L", MEAN, STD)(digit())
    assert a.shape == b.shape == (1, 28, 28) and a.dtype == torch.float32
    assert not torch.equal(a, b)


def test_simclr_on_colour_images_has_three_channels():
    img = Image.new("RGB", (40, 30), (255, 0, 0))
    a, _ = SimCLRTransform(32, "RGB", (0.5,) * 3, (0.5,) * 3)(img)
    assert a.shape == (3, 32, 32)


def test_mae_transform_shape():
    assert MAETransform(28, "L", MEAN, STD)(digit()).shape == (1, 28, 28)


def test_eval_transform_is_deterministic_and_normalises():
    transform = EvalTransform(28, "L", MEAN, STD)
    img = Image.new("L", (28, 28), 255)
    out = transform(img)
    assert torch.equal(out, transform(img))
    assert torch.allclose(out, torch.full((1, 28, 28), (1.0 - 0.5) / 0.25))


def test_preprocessing_spec_describes_eval_transform():
    spec = EvalTransform(24, "RGB", (0.1, 0.2, 0.3), (1.0, 1.0, 1.0), resize=28).spec
    assert spec == {"image_size": 24, "channels": 3, "mode": "RGB", "resize": 28, "crop": 24,
                    "interpolation": "bilinear", "mean": [0.1, 0.2, 0.3], "std": [1.0, 1.0, 1.0]}
    assert preprocessing_spec(28, "L", MEAN, STD)["resize"] == 28
