"""Text to token ids, the one way training and serving both do it: a `tokenizers` tokenizer.json
that carries its own truncation and fixed-length padding. Torch-free (numpy and `tokenizers`)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from tokenizers import Tokenizer


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
