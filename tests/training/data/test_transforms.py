import io

import numpy as np
import torch
from PIL import Image

from runtime.preprocessing import PreprocessingSpec, preprocess_image
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
    assert spec == PreprocessingSpec(mode="RGB", resize=28, crop=24, mean=(0.1, 0.2, 0.3), std=(1.0, 1.0, 1.0))
    assert spec.channels == 3 and preprocessing_spec(28, "L", MEAN, STD).resize == 28


def test_preprocess_image_reproduces_eval_transform():
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (37, 50, 3), dtype=np.uint8), "RGB")
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    transform = EvalTransform(24, "RGB", mean, std, resize=29)
    expected = transform(photo).numpy()
    got = preprocess_image(photo, transform.spec)
    assert got.shape == expected.shape == (3, 24, 24)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    grey = EvalTransform(28, "L", (0.286,), (0.353,))
    digit = Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8), "L")
    np.testing.assert_allclose(preprocess_image(digit, grey.spec), grey(digit).numpy(), atol=1e-5)
    buffer = io.BytesIO()
    photo.save(buffer, "PNG")
    assert preprocess_image(Image.open(buffer), grey.spec).shape == (1, 28, 28)
