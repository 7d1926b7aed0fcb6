import numpy as np

from training.data.images import load_image_arrays
from training.evaluation.encoder_eval import evaluate_encoder, raw_pixels
from training.evaluation.linear_probe import linear_probe, stratified_subset


def test_stratified_subset_keeps_class_balance():
    labels = np.repeat(np.arange(10), 100)
    keep = stratified_subset(labels, 0.1, seed=0)
    assert len(keep) == 100 and np.bincount(labels[keep]).tolist() == [10] * 10
    assert np.array_equal(keep, stratified_subset(labels, 0.1, seed=0))  # fixed seed, same subset
    assert len(stratified_subset(labels, 1.0)) == 1000


def test_probe_separates_linearly_separable_classes_and_not_noise():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000, 8))
    y = (x[:, 0] > 0).astype(np.int64)
    good = linear_probe(x[:800], y[:800], x[800:], y[800:], fractions=(0.1, 1.0))
    assert set(good) == {"10%", "100%"} and good["100%"] > 95
    noise = linear_probe(x[:800], rng.integers(0, 2, 800), x[800:], y[800:], fractions=(1.0,))
    assert noise["100%"] < 65


def test_evaluate_encoder_on_digit_pixels():
    train, test = load_image_arrays("digits", "train"), load_image_arrays("digits", "test")
    def coarse_pixels(images):  # every 4th pixel: 49 features keep the probe fast
        return raw_pixels(images[:, ::4, ::4])

    result = evaluate_encoder(coarse_pixels, train, test, fractions=(0.1, 1.0), k=20)
    assert result["dim"] == 49 and set(result["linear_top1_pct"]) == {"10%", "100%"}
    assert result["knn_top1_pct"] > 90 and result["linear_top1_pct"]["100%"] > 90
