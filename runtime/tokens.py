"""Text to token ids, the one way training, export, serving and jobs all do it: a `tokenizers`
tokenizer.json that carries its own truncation and fixed-length padding. Torch-free."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from tokenizers import Tokenizer


class InvalidText(ValueError):
    """A text that cannot be embedded as sent (empty, or longer than the model reads); the message
    says which one and what to fix."""


class TextTooLong(InvalidText):
    """A text longer than the model reads, where truncation was not asked for."""


def load_tokenizer(source: str | Path) -> Tokenizer:
    """A tokenizer from a tokenizer.json path or from its JSON text (as a checkpoint stores it)."""
    text = str(source)
    if text.lstrip().startswith("{"):
        return Tokenizer.from_str(text)
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file {path} not found")
    return Tokenizer.from_file(str(path))


def encode_batch(tokenizer: Tokenizer, texts: Sequence[str], with_truncation: bool = False) -> tuple[np.ndarray, ...]:
    """(ids int64 (B, T), attention_mask int64 (B, T)) for `texts`, using only the truncation and
    padding saved in the tokenizer, so every caller gets the same T and the same pad positions.
    With `with_truncation`, also a bool (B,) saying which texts were cut to fit, from the same pass."""
    if isinstance(texts, str):
        raise TypeError("encode_batch takes a list of texts, not one string")
    if tokenizer.padding is None or tokenizer.padding.get("length") is None or tokenizer.truncation is None:
        raise ValueError("the tokenizer has no fixed-length padding and truncation; build it with "
                         "training.data.tokenizer.set_context_length(tokenizer, context_length)")
    encodings = tokenizer.encode_batch(list(texts))
    ids = np.array([e.ids for e in encodings], dtype=np.int64).reshape(len(texts), -1)  # (B, T)
    mask = np.array([e.attention_mask for e in encodings], dtype=np.int64).reshape(len(texts), -1)  # (B, T)
    if with_truncation:
        return ids, mask, np.array([bool(e.overflowing) for e in encodings], dtype=bool)  # (B,)
    return ids, mask


def context_length(tokenizer: Tokenizer) -> int:
    """The fixed number of tokens T that encode_batch returns per text."""
    if tokenizer.padding is None or tokenizer.padding.get("length") is None:
        raise ValueError("the tokenizer pads to no fixed length")
    return int(tokenizer.padding["length"])


def describe_text(position: int, text: str) -> str:
    """How errors name a text: its position and the start of it."""
    shown = text if len(text) <= 40 else text[:37] + "..."
    return f"text {position} ({shown!r})"


def text_encoder_batch(tokenizer: Tokenizer, texts: Sequence[str], names: Sequence[str] | None = None,
                       truncate: bool = False, too_long_hint: str = "shorten it") -> np.ndarray:
    """Texts -> a text encoder's batch (n, 2, T) int64: token ids and attention mask stacked, the
    way an Encoder takes a model of two inputs. An empty text is an InvalidText; so is a text that
    the tokenizer would truncate (TextTooLong, its message ending in `too_long_hint`) rather than
    silently cut, its embedding describing a text nobody sent, unless the caller asks to
    `truncate`: then it is its first context-length tokens, end token included, as the model's own
    library cuts it. `names[i]` says how an error names text i (default: its position and start)."""
    names = names or [describe_text(i, t) for i, t in enumerate(texts)]
    for name, text in zip(names, texts):
        if not text.strip():
            raise InvalidText(f"{name} is empty; send words to embed")
    # (n, T) int64 each: exactly what training fed the tower; truncated (n,): texts cut to fit the context
    ids, mask, truncated = encode_batch(tokenizer, texts, with_truncation=True)
    if truncated.any() and not truncate:
        name = names[int(np.flatnonzero(truncated)[0])]
        raise TextTooLong(f"{name} is longer than the {context_length(tokenizer)} tokens the model reads "
                          f"(special tokens included); {too_long_hint}")
    return np.stack([ids, mask], axis=1)  # (n, 2, T)


def used_length(attention_mask: np.ndarray) -> int:
    """The tokens per row (B, T) that keep every real token of a right-padded batch: 1 + the last
    column any row attends to. A model with a dynamic sequence axis run on the first `used_length`
    columns computes what it does on all T (the mask already hides padding from attention and
    pooling), in the time of the longest text rather than of the whole context."""
    used = np.flatnonzero(attention_mask.any(axis=0))  # (≤T,) columns some row attends to
    return int(used[-1]) + 1 if used.size else 1


def row_lengths(attention_mask: np.ndarray) -> np.ndarray:
    """Each row's own used_length (B,): 1 + the last column it attends to (1 for a row that
    attends to none), the tokens that row alone would make such a model run."""
    attended = np.asarray(attention_mask).astype(bool)  # (B, T)
    last = attended.shape[1] - np.argmax(attended[:, ::-1], axis=1)  # (B,)
    return np.where(attended.any(axis=1), last, 1)
