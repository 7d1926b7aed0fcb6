import asyncio

import numpy as np
import pytest

import index.class_matrix
from index.class_matrix import ClassMatrixCache, QueryBank, build_class_matrix, classify, query_bank_offsets

# A toy text encoder: each known prompt has a fixed vector, deliberately not unit length.
PROMPTS = {
    "a cat": [2.0, 0.0], "photo of cat": [0.0, 3.0],
    "a dog": [-1.0, 0.0], "photo of dog": [0.0, -1.0],
}


class Encoder:
    """The toy encoder, recording each call it gets; each test makes its own."""

    def __init__(self):
        self.calls: list[list[str]] = []

    def __call__(self, texts):
        self.calls.append(list(texts))
        return np.array([PROMPTS[t] for t in texts])

    async def awaited(self, texts):  # what the cache awaits, as a server's batcher is awaited
        return self(texts)


def test_class_row_is_the_normalised_mean_of_normalised_template_embeddings():
    encode = Encoder()
    matrix = build_class_matrix(encode, ["cat", "dog"], ["a {}", "photo of {}"])
    # cat: mean of (1, 0) and (0, 1) = (0.5, 0.5) -> (1, 1)/sqrt 2; the raw lengths 2 and 3 do not tilt it
    np.testing.assert_allclose(matrix, [[1, 1], [-1, -1]] / np.sqrt(2), rtol=1e-6)
    assert matrix.dtype == np.float32 and encode.calls == [["a cat", "photo of cat", "a dog", "photo of dog"]]


def test_classify_is_a_softmax_of_scaled_cosines():
    matrix = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    probabilities = classify(np.array([[2.0, 0.0], [1.0, 1.0]]), matrix, logit_scale=10.0)
    np.testing.assert_allclose(probabilities[0], [1 / (1 + np.exp(-10)), np.exp(-10) / (1 + np.exp(-10))], rtol=1e-5)
    np.testing.assert_allclose(probabilities[1], [0.5, 0.5], rtol=1e-6)


def test_templates_without_a_slot_are_refused():
    with pytest.raises(ValueError, match="templates need"):
        build_class_matrix(Encoder(), ["cat"], ["a photo"])


def test_query_bank_offset_is_the_mean_of_each_class_s_k_largest_cosines():
    bank = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [-1.0, 0.0]], np.float32)
    classes = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    # cosines to class 0: 1, 0, 0.6, -1 -> top 2 mean (1 + 0.6) / 2; to class 1: 0, 1, 0.8, 0 -> (1 + 0.8) / 2
    np.testing.assert_allclose(query_bank_offsets(bank, classes, k=2), [0.8, 0.9], rtol=1e-6)
    np.testing.assert_allclose(query_bank_offsets(bank, classes, k=1), [1.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(query_bank_offsets(2 * bank, classes, k=4), [0.15, 0.45], rtol=1e-6)  # cosines: length ignored
    with pytest.raises(ValueError, match="k=5"):
        query_bank_offsets(bank, classes, k=5)


def test_offsets_let_a_class_beat_a_hub_that_plain_cosines_prefer():
    # Every bank image is close to "hub" (cosines ~0.98), none to "rare" (0.2 at most). An image a little
    # nearer the hub than the rare class goes to the hub by plain cosine, to the rare class once each
    # class's offset (hub ~0.98, rare 0.0) is subtracted.
    hub, rare = [1.0, 0.0], [0.0, 1.0]
    bank = np.array([[0.98, -0.2], [0.98, 0.2], [0.96, -0.28]])
    classes = np.array([hub, rare], np.float32)
    image = np.array([[0.72, 0.69]])
    plain = classify(image, classes, logit_scale=10.0)
    offsets = query_bank_offsets(bank, classes, k=2)
    normalised = classify(image, classes, logit_scale=10.0, offsets=offsets)
    assert plain.argmax() == 0 and normalised.argmax() == 1
    cosines = image / np.linalg.norm(image) @ classes.T  # (1, 2)
    logits = 10.0 * (cosines - offsets)
    np.testing.assert_allclose(normalised, np.exp(logits) / np.exp(logits).sum(), rtol=1e-5)  # the temperature still applies


def test_cache_remembers_offsets_with_the_matrix(monkeypatch):
    computed = []

    def counting_offsets(bank, class_matrix, k):
        computed.append(k)
        return query_bank_offsets(bank, class_matrix, k)

    monkeypatch.setattr(index.class_matrix, "query_bank_offsets", counting_offsets)
    cache, bank, encode = ClassMatrixCache(), QueryBank(np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], np.float32), k=2), Encoder()

    async def get(query_bank=None):
        return await cache.get("clip", "v1", ["cat", "dog"], ["a {}"], encode.awaited, query_bank)

    async def scenario():
        matrix, none = await get()  # plain first: no offsets yet
        matrix_again, offsets = await get(bank)
        assert none is None and matrix_again is matrix and len(encode.calls) == 1 and computed == [2]  # offsets added, matrix reused
        np.testing.assert_allclose(offsets, query_bank_offsets(bank.embeddings, matrix, 2))
        assert (await get())[1] is None  # a plain request still gets none
        third_matrix, third_offsets = await get(bank)
        assert third_matrix is matrix and third_offsets is offsets and len(encode.calls) == 1 and computed == [2]  # nothing new

    asyncio.run(scenario())


def test_cache_builds_once_per_key_and_evicts_the_least_recently_used():
    cache, encode = ClassMatrixCache(max_entries=2), Encoder()

    async def scenario():
        first, _ = await cache.get("clip", "v1", ["cat", "dog"], ["a {}"], encode.awaited)
        assert (await cache.get("clip", "v1", ("cat", "dog"), ("a {}",), encode.awaited))[0] is first and len(encode.calls) == 1
        await cache.get("clip", "v2", ["cat", "dog"], ["a {}"], encode.awaited)  # another version is another matrix
        await cache.get("clip", "v1", ["cat"], ["a {}"], encode.awaited)  # a third key evicts the least recently used: v1 cat+dog
        assert len(cache) == 2 and len(encode.calls) == 3
        await cache.get("clip", "v1", ["cat", "dog"], ["a {}"], encode.awaited)
        assert len(encode.calls) == 4  # it had been evicted and is built again

    asyncio.run(scenario())
