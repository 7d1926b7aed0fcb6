import io

import numpy as np
import pytest
from PIL import Image

from runtime.occlusion import (MASK_FILL, drop_map, grid_shape, input_view, occlusion_batch,
                               occlusion_count, overlay_png, patch_edges)
from runtime.preprocessing import PreprocessingSpec, preprocess_image


def test_patches_cover_every_pixel_once_even_when_the_grid_does_not_divide_the_side():
    edges = patch_edges(10, 3)
    assert edges.tolist() == [0, 3, 6, 10]
    assert np.diff(patch_edges(28, 8)).tolist() == [3, 4, 3, 4, 3, 4, 3, 4]
    with pytest.raises(ValueError):
        patch_edges(4, 5)


def test_a_grid_finer_than_the_input_is_one_patch_per_pixel():
    assert grid_shape(28, 28, 8) == (8, 8)
    assert grid_shape(4, 6, 8) == (4, 6)


def test_the_sequence_is_the_unmasked_input_then_each_patch_masked_in_reading_order():
    image = np.arange(2 * 4 * 6, dtype=np.float32).reshape(2, 4, 6) + 1  # (C, H, W), no zeros
    rows, cols = 2, 3
    batch = occlusion_batch(image, rows, cols, 0, occlusion_count(rows, cols))  # (7, 2, 4, 6)
    assert batch.shape == (7, 2, 4, 6)
    np.testing.assert_array_equal(batch[0], image)
    for position in range(1, 7):
        r, c = divmod(position - 1, cols)
        masked = batch[position] == MASK_FILL  # (C, H, W)
        expected = np.zeros((4, 6), bool)
        expected[2 * r:2 * r + 2, 2 * c:2 * c + 2] = True
        assert (masked == expected[None]).all(), position
        np.testing.assert_array_equal(batch[position][~masked], image[~masked])


def test_a_slice_of_the_sequence_is_the_same_as_that_slice_of_the_whole():
    image = np.random.default_rng(0).normal(size=(1, 8, 8)).astype(np.float32)
    whole = occlusion_batch(image, 4, 4, 0, 17)
    parts = np.concatenate([occlusion_batch(image, 4, 4, start, min(start + 5, 17)) for start in range(0, 17, 5)])
    np.testing.assert_array_equal(parts, whole)
    with pytest.raises(ValueError):
        occlusion_batch(image, 4, 4, 10, 18)


def test_the_map_finds_the_evidence_of_a_score_that_reads_one_corner():
    # a known answer: the score is the mean of the top-left 4x4 pixels, so masking any patch in it
    # drops the score by that patch's share and masking anything else changes nothing
    rng = np.random.default_rng(1)
    image = rng.uniform(-1, 1, size=(1, 16, 16)).astype(np.float32)
    image[:, :4, :4] = 1.0
    batch = occlusion_batch(image, 8, 8, 0, occlusion_count(8, 8))  # (65, 1, 16, 16)
    score, drops = drop_map(batch[:, 0, :4, :4].mean(axis=(1, 2)), 8, 8)
    assert score == pytest.approx(1.0)
    np.testing.assert_allclose(drops[:2, :2], 0.25)  # each 2x2 patch is a quarter of the corner
    drops[:2, :2] = 0
    np.testing.assert_allclose(drops, 0.0)


def test_drop_map_wants_a_score_for_every_input():
    with pytest.raises(ValueError, match="needs 5"):
        drop_map(np.zeros(4), 2, 2)


def test_the_input_view_undoes_the_normalisation():
    spec = PreprocessingSpec(mode="RGB", resize=4, crop=4, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    pixels = np.random.default_rng(2).integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    view = input_view(preprocess_image(Image.fromarray(pixels, "RGB"), spec), spec)
    np.testing.assert_array_equal(view, pixels)
    grey = PreprocessingSpec(mode="L", resize=4, crop=4, mean=(0.5,), std=(0.5,))
    assert input_view(np.zeros((1, 4, 4), np.float32), grey).tolist() == [[[128] * 3] * 4] * 4


def test_the_overlay_is_a_png_scaled_up_with_the_evidence_tinted_red():
    view = np.full((16, 16, 3), 128, np.uint8)
    drops = np.zeros((4, 4))
    drops[0, 0] = 0.5
    drops[3, 3] = -0.25
    png = overlay_png(view, drops)
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.size == (224, 224) and image.mode == "RGB"
    pixels = np.asarray(image).astype(int)  # (224, 224, 3)
    corner, middle, far = pixels[10, 10], pixels[100, 100], pixels[220, 220]
    assert middle.tolist() == [128, 128, 128]  # no drop, no tint
    assert corner[0] > 200 and corner[2] < 100  # red, at full strength
    assert far[2] > far[0]  # blue, half as strong
    assert abs(far - 128).max() < abs(corner - 128).max()


def test_an_all_zero_map_leaves_the_image_as_it_is():
    view = np.random.default_rng(3).integers(0, 256, size=(28, 28, 3), dtype=np.uint8)
    image = np.asarray(Image.open(io.BytesIO(overlay_png(view, np.zeros((8, 8))))))
    assert image.shape == (224, 224, 3)
    np.testing.assert_array_equal(image[::8, ::8], view)
