import numpy as np
import pytest

from index.zero_shot import ClassMatrixCache, build_class_matrix, classify

# A toy text encoder: each known prompt has a fixed vector, deliberately not unit length.
PROMPTS = {
    "a cat": [2.0, 0.0], "photo of cat": [0.0, 3.0],
    "a dog": [-1.0, 0.0], "photo of dog": [0.0, -1.0],
}
calls = []


def encode(texts):
    calls.append(list(texts))
    return np.array([PROMPTS[t] for t in texts])


def test_class_row_is_the_normalised_mean_of_normalised_template_embeddings():
    matrix = build_class_matrix(encode, ["cat", "dog"], ["a {}", "photo of {}"])
    # cat: mean of (1, 0) and (0, 1) = (0.5, 0.5) -> (1, 1)/sqrt 2; the raw lengths 2 and 3 do not tilt it
    np.testing.assert_allclose(matrix, [[1, 1], [-1, -1]] / np.sqrt(2), rtol=1e-6)
    assert matrix.dtype == np.float32 and calls[-1] == ["a cat", "photo of cat", "a dog", "photo of dog"]


def test_classify_is_a_softmax_of_scaled_cosines():
    matrix = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    probabilities = classify(np.array([[2.0, 0.0], [1.0, 1.0]]), matrix, logit_scale=10.0)
    np.testing.assert_allclose(probabilities[0], [1 / (1 + np.exp(-10)), np.exp(-10) / (1 + np.exp(-10))], rtol=1e-5)
    np.testing.assert_allclose(probabilities[1], [0.5, 0.5], rtol=1e-6)


def test_templates_without_a_slot_are_refused():
    with pytest.raises(ValueError, match="templates need"):
        build_class_matrix(encode, ["cat"], ["a photo"])


def test_cache_builds_once_per_key_and_evicts_the_least_recently_used():
    cache = ClassMatrixCache(max_entries=2)
    calls.clear()
    first = cache.get("clip", "v1", ["cat", "dog"], ["a {}"], encode)
    assert cache.get("clip", "v1", ("cat", "dog"), ("a {}",), encode) is first and len(calls) == 1
    cache.get("clip", "v2", ["cat", "dog"], ["a {}"], encode)  # another version is another matrix
    cache.get("clip", "v1", ["cat"], ["a {}"], encode)  # a third key evicts the least recently used: v1 cat+dog
    assert len(cache) == 2 and len(calls) == 3
    cache.get("clip", "v1", ["cat", "dog"], ["a {}"], encode)
    assert len(calls) == 4  # it had been evicted and is built again
