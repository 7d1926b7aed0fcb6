"""The numba kernel's bookkeeping: chunking, subsampling, and that it trains what it is given."""

import numpy as np

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
