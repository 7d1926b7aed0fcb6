"""The CPU word2vec kernel: skip-gram and CBOW with negative sampling, compiled by numba.

The encoded corpus (one int32 array of word ids plus sentence offsets) is cut into chunks of
whole sentences. Worker threads take chunks from a shared queue and run `train_chunk` on them
with the GIL released, updating the shared float32 tables without locks (Hogwild, as
word2vec.c and gensim do). Random numbers come from word2vec.c's per-thread linear
congruential generator, so the kernel needs no numpy random state.

Two things make it fast, both measured on GCIDE: each example's noise words are drawn one
example ahead and their output rows prefetched, so the rows are in cache when needed
(skip-gram about 2x); and a table row is always indexed through a local word id, never
`kept[j]` inside the loop over dimensions, since numba cannot tell that a store to the float
tables leaves `kept` alone and would reload it per element instead of vectorising (CBOW 2.7x).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from llvmlite import ir
from llvmlite.binding import llvm_version_info
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

# word2vec.c's generator: next_random = next_random * 25214903917 + 11 (mod 2**64)
LCG_MULTIPLIER = np.uint64(25214903917)
LCG_INCREMENT = np.uint64(11)

# The sigmoid is read from a table over [-MAX_EXP, MAX_EXP] and saturates outside it (word2vec.c).
MAX_EXP = 6.0
SIGMOID_TABLE_SIZE = 1000
SIGMOID_SCALE = SIGMOID_TABLE_SIZE / MAX_EXP / 2  # table slots per unit of x

# Words per chunk handed to a thread: big enough that Python's per-chunk cost vanishes,
# small enough that threads finish an epoch together and the learning rate steps finely.
CHUNK_WORDS = 20_000


def sigmoid_table() -> np.ndarray:
    """sigmoid(x) at SIGMOID_TABLE_SIZE points spread over [-MAX_EXP, MAX_EXP)."""
    x = (np.arange(SIGMOID_TABLE_SIZE, dtype=np.float64) / SIGMOID_TABLE_SIZE * 2 - 1) * MAX_EXP
    return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)  # (SIGMOID_TABLE_SIZE,)


@njit(nogil=True, fastmath=True, cache=True, inline="always")
def _next_random(state: np.uint64) -> np.uint64:
    return state * LCG_MULTIPLIER + LCG_INCREMENT


@njit(nogil=True, fastmath=True, cache=True, inline="always")
def _uniform_u32(state: np.uint64) -> np.int64:
    # The top bits of an LCG are its most random ones.
    return np.int64(state >> np.uint64(32))


# The intrinsic's name carries its pointer type: opaque pointers ("p0") from LLVM 15 on.
_PREFETCH_INTRINSIC = "llvm.prefetch.p0" if llvm_version_info[0] >= 15 else "llvm.prefetch.p0i8"


@intrinsic
def _prefetch(typingctx, matrix, row, column):
    """Ask the CPU to start loading the cache line holding matrix[row, column], for writing
    (llvm.prefetch: write intent, kept in every cache level). It returns at once and never
    faults. Write intent, because every row prefetched is then updated: on GCIDE it made
    CBOW 1.3x faster than a read prefetch."""
    if not (isinstance(matrix, types.Array) and matrix.ndim == 2 and matrix.layout == "C"):
        return None

    def codegen(context, builder, signature, args):
        array_type = signature.args[0]
        array = context.make_array(array_type)(context, builder, args[0])
        indices = [context.cast(builder, value, kind, types.intp) for value, kind in zip(args[1:], signature.args[1:])]
        pointer = cgutils.get_item_pointer(context, builder, array_type, array, indices, wraparound=False)
        i8_pointer, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        prefetch = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8_pointer, i32, i32, i32]), _PREFETCH_INTRINSIC
        )
        builder.call(prefetch, [builder.bitcast(pointer, i8_pointer), i32(1), i32(3), i32(1)])  # write, high locality, data cache
        return context.get_dummy_value()

    return types.void(matrix, row, column), codegen


@njit(nogil=True, fastmath=True, cache=True, inline="always")
def _draw_noise(noise, first, negative, state, vocab_size, alias_threshold, alias, output_vectors, dim):
    """Draw `negative` words from the alias table into noise[first:first + negative] and start
    loading their output rows, so that they are in cache when the next example needs them."""
    for k in range(first, first + negative):
        state = _next_random(state)
        slot = (_uniform_u32(state) * vocab_size) >> 32  # uniform in [0, V)
        state = _next_random(state)
        word = slot if _uniform_u32(state) < alias_threshold[slot] else alias[slot]
        noise[k] = word
        for column in range(0, dim, 16):  # one prefetch per 64-byte line of the row
            _prefetch(output_vectors, word, column)
        _prefetch(output_vectors, word, dim - 1)
    return state


@njit(nogil=True, fastmath=True, cache=True, inline="always")
def _negative_sampling_step(hidden, hidden_grad, output_vectors, centre, noise, first, negative, alpha, sigmoid, dim):
    """One negative-sampling example: `hidden` predicts `centre` against noise[first:first + negative].

    Updates the output rows in place and leaves in hidden_grad the step for the input side
    (word2vec.c's neu1e: the learning rate is already in it).
    """
    for d in range(dim):
        hidden_grad[d] = 0.0
    for k in range(negative + 1):
        if k == 0:
            target = centre
            label = np.float32(1.0)
        else:
            target = noise[first + k - 1]
            if target == centre:
                continue
            label = np.float32(0.0)
        f = np.float32(0.0)
        for d in range(dim):
            f += hidden[d] * output_vectors[target, d]
        if f >= MAX_EXP:
            g = (label - np.float32(1.0)) * alpha
        elif f <= -MAX_EXP:
            g = label * alpha
        else:
            g = (label - sigmoid[int((f + MAX_EXP) * SIGMOID_SCALE)]) * alpha
        for d in range(dim):
            hidden_grad[d] += g * output_vectors[target, d]
            output_vectors[target, d] += g * hidden[d]


@njit(nogil=True, fastmath=True, cache=True)
def train_chunk(
    ids: np.ndarray,  # (N,) int32 word ids of the whole corpus
    sentence_starts: np.ndarray,  # (S + 1,) int64 offsets into ids
    first_sentence: int,
    end_sentence: int,  # train sentences [first_sentence, end_sentence)
    input_vectors: np.ndarray,  # (V, D) float32, updated in place
    output_vectors: np.ndarray,  # (V, D) float32, updated in place
    keep_u32: np.ndarray,  # (V,) int64 subsampling thresholds out of 2**32
    alias_threshold: np.ndarray,  # (V,) int64 negative-sampling alias table: keep-slot thresholds
    alias: np.ndarray,  # (V,) int32 ... and the word each slot falls back to
    sigmoid: np.ndarray,  # (SIGMOID_TABLE_SIZE,) float32
    window: int,
    negative: int,
    cbow: bool,
    alpha_begin: float,
    alpha_end: float,  # learning rate at the chunk's first and last word
    rng_state: np.ndarray,  # (1,) uint64, this thread's generator, advanced in place
) -> int:
    """Train on a run of sentences; return the words kept after subsampling ("effective words")."""
    vocab_size, dim = input_vectors.shape
    state = rng_state[0]
    chunk_words = sentence_starts[end_sentence] - sentence_starts[first_sentence]
    max_len = 0
    for s in range(first_sentence, end_sentence):
        max_len = max(max_len, sentence_starts[s + 1] - sentence_starts[s])
    kept = np.empty(max_len, dtype=np.int32)  # the sentence after subsampling
    hidden = np.empty(dim, dtype=np.float32)  # the input side: a context vector, or CBOW's mean of them
    hidden_grad = np.empty(dim, dtype=np.float32)
    # Noise words for two examples: the one being trained and the next, drawn (and their rows
    # prefetched) one example ahead. `now` is the offset of the current example's draws.
    noise = np.empty(2 * negative, dtype=np.int64)
    now = 0
    state = _draw_noise(noise, now, negative, state, vocab_size, alias_threshold, alias, output_vectors, dim)
    effective_words = 0

    for s in range(first_sentence, end_sentence):
        done = sentence_starts[s] - sentence_starts[first_sentence]
        alpha = np.float32(alpha_begin + (alpha_end - alpha_begin) * (done / max(chunk_words, 1)))

        # Subsample frequent words before windowing, so windows reach past dropped words.
        n = 0
        for k in range(sentence_starts[s], sentence_starts[s + 1]):
            word = ids[k]
            state = _next_random(state)
            if keep_u32[word] > _uniform_u32(state):
                kept[n] = word
                n += 1
        effective_words += n

        for i in range(n):
            # Dynamic window: a span drawn uniformly from 1..window, per centre word.
            state = _next_random(state)
            reduced = (_uniform_u32(state) * window) >> 32  # uniform in [0, window)
            lo = max(0, i - window + reduced)
            hi = min(n, i + window + 1 - reduced)
            centre = kept[i]
            if hi - lo < 2:
                continue  # no context words

            if cbow:
                # One example per centre word: the mean of the context predicts it, and every
                # context word gets the whole step (word2vec.c, gensim's cbow_mean=1).
                for d in range(dim):
                    hidden[d] = 0.0
                for j in range(lo, hi):
                    if j != i:
                        context = kept[j]  # a local: numba cannot tell that the stores below leave `kept` alone
                        for d in range(dim):
                            hidden[d] += input_vectors[context, d]
                inv_count = np.float32(1.0 / (hi - lo - 1))
                for d in range(dim):
                    hidden[d] *= inv_count
                state = _draw_noise(noise, negative - now, negative, state, vocab_size, alias_threshold, alias, output_vectors, dim)
                _negative_sampling_step(hidden, hidden_grad, output_vectors, centre, noise, now, negative, alpha, sigmoid, dim)
                now = negative - now
                for j in range(lo, hi):
                    if j != i:
                        context = kept[j]
                        for d in range(dim):
                            input_vectors[context, d] += hidden_grad[d]
            else:
                # One example per context word: its input vector predicts the centre (word2vec.c's order).
                for j in range(lo, hi):
                    if j == i:
                        continue
                    context = kept[j]
                    for d in range(dim):
                        hidden[d] = input_vectors[context, d]
                    state = _draw_noise(noise, negative - now, negative, state, vocab_size, alias_threshold, alias, output_vectors, dim)
                    _negative_sampling_step(hidden, hidden_grad, output_vectors, centre, noise, now, negative, alpha, sigmoid, dim)
                    now = negative - now
                    for d in range(dim):
                        input_vectors[context, d] += hidden_grad[d]

    rng_state[0] = state
    return effective_words


@dataclass(frozen=True)
class KernelTables:
    """Everything `train_chunk` reads besides the corpus, in the dtypes it was compiled for."""

    input_vectors: np.ndarray  # (V, D) float32
    output_vectors: np.ndarray  # (V, D) float32
    keep_u32: np.ndarray  # (V,) int64
    alias_threshold: np.ndarray  # (V,) int64
    alias: np.ndarray  # (V,) int32
    sigmoid: np.ndarray  # (SIGMOID_TABLE_SIZE,) float32


def chunk_boundaries(sentence_starts: np.ndarray, chunk_words: int = CHUNK_WORDS) -> np.ndarray:
    """Sentence indices that cut the corpus into runs of about `chunk_words` words each."""
    total = int(sentence_starts[-1])
    cuts = np.searchsorted(sentence_starts, np.arange(0, total, max(chunk_words, 1)), side="left")
    return np.unique(np.concatenate([cuts, [len(sentence_starts) - 1]]))  # (C + 1,) first sentence of each chunk, then S


def compile_kernel() -> float:
    """Compile (or load from numba's cache) both kernel variants; return the seconds it took."""
    started = time.perf_counter()
    rng = np.random.default_rng(0)
    vocab_size, dim = 4, 8
    tables = KernelTables(
        input_vectors=rng.random((vocab_size, dim), dtype=np.float32),
        output_vectors=np.zeros((vocab_size, dim), dtype=np.float32),
        keep_u32=np.full(vocab_size, 2**32, dtype=np.int64),
        alias_threshold=np.full(vocab_size, 2**32, dtype=np.int64),
        alias=np.arange(vocab_size, dtype=np.int32),
        sigmoid=sigmoid_table(),
    )
    ids = np.array([0, 1, 2, 3, 2, 1], dtype=np.int32)
    starts = np.array([0, 6], dtype=np.int64)
    for cbow in (False, True):
        _run_chunk(ids, starts, 0, 1, tables, 2, 2, cbow, 0.025, 0.025, np.ones(1, dtype=np.uint64))
    return time.perf_counter() - started


def _run_chunk(ids, starts, first, end, tables: KernelTables, window, negative, cbow, alpha_begin, alpha_end, rng_state) -> int:
    return train_chunk(
        ids, starts, np.int64(first), np.int64(end),
        tables.input_vectors, tables.output_vectors, tables.keep_u32, tables.alias_threshold, tables.alias,
        tables.sigmoid,
        np.int64(window), np.int64(negative), bool(cbow), np.float64(alpha_begin), np.float64(alpha_end), rng_state,
    )  # fmt: skip


def train_epoch(
    ids: np.ndarray,
    sentence_starts: np.ndarray,
    tables: KernelTables,
    window: int,
    negative: int,
    cbow: bool,
    alpha_at: Callable[[int], float],
    rng_states: np.ndarray,
    on_progress: Callable[[int, int], None] | None = None,
    chunk_words: int = CHUNK_WORDS,
) -> int:
    """One pass over the corpus with one thread per row of `rng_states`; return effective words.

    `alpha_at(w)` is the learning rate after `w` words of this epoch (the caller's linear
    schedule). `on_progress(words, effective_words)` is called from the calling thread, about
    five times a second, with the counts done since its last call.
    """
    bounds = chunk_boundaries(sentence_starts, chunk_words)
    next_chunk = iter(range(len(bounds) - 1))
    lock = threading.Lock()
    done = np.zeros((len(rng_states), 2), dtype=np.int64)  # per thread: words, effective words
    errors: list[BaseException] = []

    def work(thread: int) -> None:
        try:
            while True:
                with lock:
                    c = next(next_chunk, None)
                if c is None:
                    return
                first, end = int(bounds[c]), int(bounds[c + 1])
                w0, w1 = int(sentence_starts[first]), int(sentence_starts[end])
                effective = _run_chunk(
                    ids, sentence_starts, first, end, tables, window, negative, cbow,
                    alpha_at(w0), alpha_at(w1), rng_states[thread : thread + 1],
                )  # fmt: skip
                done[thread, 0] += w1 - w0
                done[thread, 1] += effective
        except BaseException as error:  # surfaced in the calling thread below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(t,), daemon=True) for t in range(len(rng_states))]
    for thread in threads:
        thread.start()
    reported = np.zeros(2, dtype=np.int64)
    while any(thread.is_alive() for thread in threads):
        threads[0].join(timeout=0.2)
        if on_progress is not None:
            now = done.sum(axis=0)
            on_progress(int(now[0] - reported[0]), int(now[1] - reported[1]))
            reported = now
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    if on_progress is not None:
        now = done.sum(axis=0)
        on_progress(int(now[0] - reported[0]), int(now[1] - reported[1]))
    return int(done[:, 1].sum())
