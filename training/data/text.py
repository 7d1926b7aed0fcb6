"""Plain-text corpora for word vectors: a tokenizer and a reader that streams sentences.

The reader walks one .txt, .gz or .dz file (dictzip is gzip-compatible) or a folder of them,
recursively in sorted order, and yields one sentence at a time, so a corpus never has to fit
in memory as Python objects. `encode_corpus` turns a corpus into one int32 array of word ids,
the form the word2vec trainers walk.
"""

from __future__ import annotations

import gzip
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

# gensim's MAX_WORDS_IN_BATCH: longer sentences are cut into pieces of this many tokens
MAX_SENTENCE_TOKENS = 10_000

# Letters in any script: `\w` minus digits and underscore, so "café" and "naïve" stay whole.
_WORD = re.compile(r"[^\W\d_]+")

TEXT_SUFFIXES = (".txt", ".gz", ".dz")


def tokenize(text: str) -> list[str]:
    """Lower-case `text` and split it on everything that is not a (Unicode) letter.

    >>> tokenize("Café au lait, 2 cups -- don't spill!")
    ['café', 'au', 'lait', 'cups', 'don', 't', 'spill']
    """
    return _WORD.findall(text.lower())


def corpus_files(path: str | Path) -> list[Path]:
    """The text files of a corpus: `path` itself, or every .txt/.gz/.dz under it, sorted."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"corpus not found: {path}")
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(TEXT_SUFFIXES))
    if not files:
        raise FileNotFoundError(f"no {'/'.join(TEXT_SUFFIXES)} files under {path}")
    return files


def _open_text(path: Path) -> IO[str]:
    # gzip reads dictzip (.dz) too: dictzip only adds an index in the gzip header's extra field.
    if path.suffix in (".gz", ".dz"):
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def _text_units(path: Path, sentence_unit: str) -> Iterator[str]:
    """Yield the raw text of each line, or of each paragraph (lines up to a blank line)."""
    with _open_text(path) as lines:
        if sentence_unit == "line":
            yield from lines
            return
        paragraph: list[str] = []
        for line in lines:
            if line.strip():
                paragraph.append(line)
            elif paragraph:
                yield "".join(paragraph)
                paragraph = []
        if paragraph:
            yield "".join(paragraph)


def iter_sentences(
    path: str | Path,
    sentence_unit: str = "paragraph",
    max_sentence_tokens: int = MAX_SENTENCE_TOKENS,
    max_words: int | None = None,
) -> Iterator[list[str]]:
    """Stream the tokenized sentences of a corpus file or folder.

    A sentence is a paragraph (text up to a blank line; right for wrapped prose such as a
    dictionary) or, with `sentence_unit="line"`, one line (right for one-sentence-per-line
    corpora). Sentences longer than `max_sentence_tokens` are cut into several; empty ones
    are skipped. `max_words` stops the stream after that many tokens, for quick runs.
    """
    if sentence_unit not in ("paragraph", "line"):
        raise ValueError(f"sentence_unit must be 'paragraph' or 'line', not {sentence_unit!r}")
    words_left = sys.maxsize if max_words is None else max_words
    for file in corpus_files(path):
        for text in _text_units(file, sentence_unit):
            tokens = tokenize(text)
            for start in range(0, len(tokens), max_sentence_tokens):
                sentence = tokens[start : start + min(max_sentence_tokens, words_left)]
                words_left -= len(sentence)
                if sentence:
                    yield sentence
                if words_left <= 0:
                    return


@dataclass(frozen=True)
class EncodedCorpus:
    """A corpus as word ids: sentence s is `ids[sentence_starts[s]:sentence_starts[s + 1]]`."""

    ids: np.ndarray  # (N,) int32, in-vocabulary words only, sentences back to back
    sentence_starts: np.ndarray  # (S + 1,) int64 offsets into ids
    raw_words: int  # tokens read, out-of-vocabulary ones included (gensim's "raw words")

    @property
    def num_sentences(self) -> int:
        return len(self.sentence_starts) - 1


def encode_corpus(
    path: str | Path,
    word_to_id: Mapping[str, int],
    sentence_unit: str = "paragraph",
    max_sentence_tokens: int = MAX_SENTENCE_TOKENS,
    max_words: int | None = None,
) -> EncodedCorpus:
    """Stream a corpus once and pack its in-vocabulary words into one int32 array.

    Out-of-vocabulary tokens are dropped (as gensim and word2vec.c do before windowing), so
    they neither take a window slot nor get trained. `max_words` stops after that many raw
    tokens, for quick runs.
    """
    pieces: list[np.ndarray] = []  # int32 arrays of about a million ids each
    buffer: list[int] = []
    lengths: list[int] = []  # in-vocabulary words per sentence
    raw_words = 0
    lookup = word_to_id.get
    for tokens in iter_sentences(path, sentence_unit, max_sentence_tokens, max_words):
        raw_words += len(tokens)
        ids = [i for i in map(lookup, tokens) if i is not None]
        if ids:
            buffer.extend(ids)
            lengths.append(len(ids))
            if len(buffer) >= 1 << 20:
                pieces.append(np.array(buffer, dtype=np.int32))
                buffer = []
    pieces.append(np.array(buffer, dtype=np.int32))
    sentence_starts = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=sentence_starts[1:])
    return EncodedCorpus(ids=np.concatenate(pieces), sentence_starts=sentence_starts, raw_words=raw_words)
