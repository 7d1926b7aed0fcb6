"""Zero-shot top-1 of an image–text model on labelled images: each class named in the evaluation
templates (runtime.templates.EVAL_TEMPLATES), its prompts' unit embeddings averaged (open_clip's
build_zero_shot_classifier), each image given the class whose averaged text is nearest. CLIP
reports it after each epoch on the held-out images beside the kNN score."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from runtime.templates import EVAL_TEMPLATES


def zero_shot_top1(image_embeddings: Tensor, labels: np.ndarray, class_names: Sequence[str],
                   encode_texts: Callable[[list[str]], Tensor], templates: Sequence[str] = EVAL_TEMPLATES) -> float:
    """Top-1 (%) of images (N, D) with labels (N,) indexing `class_names`, against the classes'
    template-averaged text embeddings from `encode_texts` (texts -> (T, D))."""
    prompts = [t.format(name) for name in class_names for t in templates]
    texts = F.normalize(encode_texts(prompts).float(), dim=-1).reshape(len(class_names), len(templates), -1)  # (C, K, D)
    classes = F.normalize(texts.mean(1), dim=-1)  # (C, D)
    predicted = (F.normalize(image_embeddings.float(), dim=-1) @ classes.T).argmax(1)  # (N,)
    return 100.0 * float((predicted.cpu().numpy() == np.asarray(labels)).mean())
