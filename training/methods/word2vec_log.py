"""Word2vec's metrics log and training curves, in the training loop's format (training.curves), so
that the same drawing, resume rule and export copy serve it.

The kernel reports no loss (computing one would slow its inner loop), so the log estimates it:
the negative-sampling loss of the current vectors on a fixed sample of the run's own examples,
scored several times an epoch from the progress callback, plus the word-vector scores
(training.evaluation.word_monitor) after each epoch. Steps are corpus words trained.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from training.curves import RunLog, write_curves
from training.data.text import EncodedCorpus
from training.data.vocab import Vocabulary, keep_probabilities, negative_sampling_probabilities
from training.evaluation.word_monitor import WordVectorMonitor
from training.methods.word2vec_examples import cbow_examples, skipgram_pairs

# The tables being trained, (V, D) float32 input and output vectors: views where they live in host memory.
Tables = Callable[[], tuple[np.ndarray, np.ndarray]]

# 2048 examples: the estimate's sampling noise (a standard error of 0.02 on the quick profile's
# final skip-gram loss of 2.34) is well under the curve's fall, and one estimate takes about 2 ms.
LOSS_SAMPLE_EXAMPLES = 2048
# Corpus words the sample's examples are drawn from: whole sentences picked at random, enough of
# them that a few long ones cannot dominate the sample.
LOSS_SAMPLE_WORDS = 50_000
_SAMPLE_STREAM = 104_729  # the sample's random numbers: a stream of its own, so training's are the same with a log or without


@dataclass(frozen=True)
class LossSample:
    """Examples as the backends train them: one hidden vector (a context word's input vector, or
    the mean of a CBOW window's) predicts a target's output vector against K noise words'."""

    context: np.ndarray  # (B,) skip-gram context words, or (B, 2W) CBOW context windows
    context_mask: np.ndarray | None  # (B, 2W) CBOW: True for a real context word, False for padding; None for skip-gram
    targets: np.ndarray  # (B,) the word each example predicts
    negatives: np.ndarray  # (B, K) noise words, drawn once from unigram^0.75
    negative_mask: np.ndarray  # (B, K) False where a noise word is the target itself (the kernel skips those)


def draw_loss_sample(config: Any, vocab: Vocabulary, corpus: EncodedCorpus, examples: int = LOSS_SAMPLE_EXAMPLES) -> LossSample:
    """A fixed sample of the examples training sees, drawn as training draws them (subsampling,
    dynamic window, negatives), the same for every run with this `config.seed` and corpus.

    The examples come from the training corpus, not from text held out of it: holding sentences
    out would make a logged run train on other data than an unlogged one. So the loss is the
    training objective estimated on a fixed sample. CBOW examples are CBOW's own (the mean of the
    context window predicts the centre), so each architecture's curve shows the loss it minimises.
    """
    rng = np.random.default_rng([config.seed, _SAMPLE_STREAM])
    lengths = np.diff(corpus.sentence_starts)  # (S,)
    order = rng.permutation(corpus.num_sentences)
    picked = np.sort(order[: int(np.searchsorted(np.cumsum(lengths[order]), LOSS_SAMPLE_WORDS)) + 1])
    ids = np.concatenate([corpus.ids[corpus.sentence_starts[s] : corpus.sentence_starts[s + 1]] for s in picked])  # (n,)
    sentences = np.repeat(np.arange(len(picked)), lengths[picked])  # (n,)
    kept = rng.random(len(ids)) < keep_probabilities(vocab.counts, config.sample)[ids]  # subsampled as training does
    ids, sentences = ids[kept], sentences[kept]
    if config.architecture == "cbow":
        context, mask, targets = cbow_examples(ids, sentences, config.window, rng)  # (P, 2W), (P, 2W), (P,)
    else:
        (context, targets), mask = skipgram_pairs(ids, sentences, config.window, rng), None  # (P,), (P,)
    if len(targets) == 0:
        raise ValueError("the corpus has no sentence of two words or more to estimate the loss on")
    chosen = np.sort(rng.choice(len(targets), size=min(examples, len(targets)), replace=False))  # (B,)
    targets = targets[chosen]
    negatives = rng.choice(len(vocab), size=(len(chosen), config.negative), p=negative_sampling_probabilities(vocab.counts))
    return LossSample(
        context=context[chosen],
        context_mask=mask[chosen] if mask is not None else None,
        targets=targets,
        negatives=negatives,
        negative_mask=negatives != targets[:, None],
    )


def sample_loss(input_vectors: np.ndarray, output_vectors: np.ndarray, sample: LossSample) -> float:
    """Mean over the sample of -log sigmoid(h.u) - sum_k log sigmoid(-h.n_k), the loss both backends
    minimise (training.losses.negative_sampling, summed there). In numpy, not torch: torch's
    intra-op threads, fighting the kernel's threads for the same cores, made one estimate take
    about 100 ms on 2 busy cores, where numpy takes about 2 ms."""
    if sample.context_mask is None:
        hidden = input_vectors[sample.context]  # (B, D)
    else:
        mask = sample.context_mask[..., None]  # (B, 2W, 1)
        hidden = (input_vectors[sample.context] * mask).sum(axis=1) / mask.sum(axis=1)  # (B, D) the window's mean
    positive = np.einsum("bd,bd->b", hidden, output_vectors[sample.targets])  # (B,)
    negative = np.einsum("bkd,bd->bk", output_vectors[sample.negatives], hidden)  # (B, K)
    # -log sigmoid(x) = log(1 + e^-x), without overflow
    loss = np.logaddexp(0, -positive) + (np.logaddexp(0, negative) * sample.negative_mask).sum(axis=1)  # (B,)
    return float(loss.mean())


class Word2VecLog:
    """The log of one word2vec run: a "start" record, a "step" record (the sample's loss) every
    1/`config.log_points_per_epoch` of an epoch's words, and an "epoch" record with the epoch's
    mean of those and the word-vector scores, the curves redrawn after each epoch.

    `tables` gives the tables being trained. On the CPU backend the Hogwild threads write them
    while the log reads them; a row caught half-updated moves an estimate over thousands of
    examples by far less than its sampling noise, and not stopping the threads is what keeps
    the log nearly free. The kernel reports progress about five times a second, so an epoch
    shorter than a couple of seconds gets fewer points (its last one always).
    """

    def __init__(self, config: Any, vocab: Vocabulary, corpus: EncodedCorpus, tables: Tables, epochs_done: int):
        self.config, self.vocab, self.tables = config, vocab, tables
        self.words_per_epoch = len(corpus.ids)
        self.sample = draw_loss_sample(config, vocab, corpus)
        self.monitor = WordVectorMonitor()
        self.log = RunLog(config.log_path, "word2vec")
        start_words = epochs_done * self.words_per_epoch
        # marks where this run starts, so that read_run keeps what a resumed run continues
        self.log.write({"kind": "start", "epoch": epochs_done, "step": start_words, "epochs": config.epochs,
                        "steps_per_epoch": self.words_per_epoch, "step_unit": "words"})
        if epochs_done == 0:  # the untrained loss, (1 + K) log 2 with zero output vectors: where the curve begins
            self.log.write({"kind": "step", "epoch": 0, "step": 0, "loss": sample_loss(*tables(), self.sample)})
        self.curves_path: str | None = None

    def begin_epoch(self, epoch: int, alpha_at: Callable[[int], float]) -> None:
        """Before epoch `epoch` (0-based); `alpha_at(w)` is the learning rate after w of its words."""
        self.epoch, self.alpha_at = epoch, alpha_at
        self.words, self.losses = 0, []
        self.window_start, self.window_words = time.perf_counter(), 0
        points = self.config.log_points_per_epoch
        self.due = [math.ceil(self.words_per_epoch * k / points) for k in range(1, points + 1)]  # words at each point

    def advance(self, words: int) -> None:
        """`words` more corpus words trained (the backends' progress callback, on the calling thread)."""
        self.words += words
        self.window_words += words
        if not self.due or self.words < self.due[0]:
            return
        while self.due and self.words >= self.due[0]:
            self.due.pop(0)
        loss = sample_loss(*self.tables(), self.sample)  # a diverged loss is raised at the epoch's end, not here under the threads
        self.losses.append(loss)
        now = time.perf_counter()
        self.log.write({"kind": "step", "epoch": self.epoch + 1, "step": self.epoch * self.words_per_epoch + self.words,
                        "loss": loss, "lr": self.alpha_at(self.words),
                        "words_per_s": self.window_words / max(now - self.window_start, 1e-9)})
        self.window_start, self.window_words = now, 0

    def end_epoch(self, epoch_time_s: float) -> dict[str, Any]:
        """Score the vectors, log the epoch, redraw the curves; returns the epoch's record."""
        if not all(math.isfinite(loss) for loss in self.losses):
            raise FloatingPointError(f"word2vec: loss {self.losses} in epoch {self.epoch + 1}; lower alpha")
        vectors, _ = self.tables()  # (V, D)
        scores = {k: float(v) for k, v in self.monitor(vectors, self.vocab.words).items()}
        record = {"kind": "epoch", "epoch": self.epoch + 1, "step": (self.epoch + 1) * self.words_per_epoch,
                  "loss": float(np.mean(self.losses)), "epoch_time_s": epoch_time_s, **({"eval": scores} if scores else {})}
        self.log.write(record)
        curves = write_curves(self.log.path)  # after every epoch, as the loop does
        self.curves_path = str(curves) if curves else None
        return record

    def __enter__(self) -> Word2VecLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.log.close()
