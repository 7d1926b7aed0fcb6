"""The numba kernel's bookkeeping: chunking, subsampling, and that it trains what it is given."""

import numpy as np
import pytest

from training.methods import word2vec_kernel as kernel


def tables(vocab_size=6, dim=4, keep=2**32):
    rng = np.random.default_rng(0)
    return kernel.KernelTables(
        input_vectors=rng.random((vocab_size, dim), dtype=np.float32) - 0.5,
        output_vectors=np.zeros((vocab_size, dim), dtype=np.float32),
        keep_u32=np.full(vocab_size, keep, dtype=np.int64),
        alias_threshold=np.full(vocab_size, 2**32, dtype=np.int64),
        alias=np.arange(vocab_size, dtype=np.int32),
        sigmoid=kernel.sigmoid_table(),
    )


def test_chunks_cover_every_sentence_once():
    starts = np.array([0, 3, 10, 11, 30, 31, 45], dtype=np.int64)
    bounds = kernel.chunk_boundaries(starts, chunk_words=10)
    assert bounds[0] == 0 and bounds[-1] == len(starts) - 1
    assert np.all(np.diff(bounds) > 0)


def test_subsampling_keeps_the_expected_share_of_words():
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 6, size=20_000).astype(np.int32)
    starts = np.arange(0, 20_001, 100, dtype=np.int64)
    for keep_share in (0.0, 0.25, 1.0):
        t = tables(keep=int(keep_share * 2**32))
        effective = kernel.train_epoch(ids, starts, t, 2, 2, False, lambda w: 0.025, np.arange(1, 3, dtype=np.uint64))
        assert abs(effective / len(ids) - keep_share) < 0.02
        assert np.any(t.output_vectors != 0) == (keep_share > 0)  # nothing kept, nothing trained


def test_progress_reports_add_up_to_the_corpus():
    ids = np.zeros(5_000, dtype=np.int32)
    starts = np.array([0, 2_500, 5_000], dtype=np.int64)
    seen = []
    kernel.train_epoch(ids, starts, tables(), 2, 1, True, lambda w: 0.025, np.ones(1, dtype=np.uint64),
                       on_progress=lambda words, effective: seen.append(words), chunk_words=1000)  # fmt: skip
    assert sum(seen) == 5_000


def reference_epoch(ids, input_vectors, output_vectors, window, negative, noise_word, alpha, cbow):
    """word2vec.c's updates for one sentence, written out plainly: every word kept, the full
    window (window=1 draws no shrink), every noise draw `noise_word`, the kernel's sigmoid table."""
    table = kernel.sigmoid_table()

    def step(hidden, centre):
        hidden_grad = np.zeros_like(hidden)
        for target, label in [(centre, 1.0)] + [(noise_word, 0.0)] * negative:
            f = float(hidden @ output_vectors[target])
            sigmoid = 1.0 if f >= kernel.MAX_EXP else 0.0 if f <= -kernel.MAX_EXP else table[int((f + kernel.MAX_EXP) * kernel.SIGMOID_SCALE)]
            g = (label - sigmoid) * alpha
            hidden_grad += g * output_vectors[target]
            output_vectors[target] += g * hidden
        return hidden_grad

    for i, centre in enumerate(ids):
        context = [ids[j] for j in range(max(0, i - window), min(len(ids), i + window + 1)) if j != i]
        if cbow:
            hidden_grad = step(input_vectors[context].mean(axis=0), centre)
            for word in context:
                input_vectors[word] += hidden_grad  # the whole step to each context word, not divided
        else:
            for word in context:
                input_vectors[word] += step(input_vectors[word].copy(), centre)


@pytest.mark.parametrize("cbow", [True, False])
def test_one_sentence_matches_a_hand_computation(cbow):
    """A sentence of distinct words, noise always the one word outside it: the kernel's tables
    after one pass equal the plain-numpy updates of word2vec.c (CBOW: the context mean predicts
    the centre and each context word gets the whole input-side step)."""
    vocab_size, dim, noise_word = 6, 4, 5
    t = tables(vocab_size, dim)
    t.output_vectors[:] = np.random.default_rng(1).normal(scale=0.3, size=(vocab_size, dim)).astype(np.float32)
    t.alias_threshold[:] = 0  # every slot falls back to its alias...
    t.alias[:] = noise_word  # ...which is the noise word
    ids = np.array([0, 1, 2, 3, 4], dtype=np.int32)
    expected_in, expected_out = t.input_vectors.astype(np.float64), t.output_vectors.astype(np.float64)
    reference_epoch(ids, expected_in, expected_out, window=1, negative=2, noise_word=noise_word, alpha=0.5, cbow=cbow)

    effective = kernel.train_epoch(ids, np.array([0, 5], dtype=np.int64), t, 1, 2, cbow, lambda w: 0.5, np.ones(1, dtype=np.uint64))
    assert effective == 5
    np.testing.assert_allclose(t.input_vectors, expected_in, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(t.output_vectors, expected_out, rtol=1e-4, atol=1e-6)
    assert not np.allclose(expected_in, tables(vocab_size, dim).input_vectors)  # the pass did change them
