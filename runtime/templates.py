"""Prompt templates as plain data: the ones captions are trained on and a disjoint set for evaluation.

Torch-free so training, serving and jobs use the same strings; each template has one "{}" for the class name.
Zero-shot is measured with EVAL_TEMPLATES only, so a score never rewards memorised phrasing.
"""

from __future__ import annotations

TRAIN_TEMPLATES: tuple[str, ...] = (
    "{}",
    "a {}",
    "an image of a {}",
    "a photo of my {}",
    "a close-up photo of a {}",
    "a low resolution photo of a {}",
    "a black and white photo of a {}",
    "a grayscale image of a {}",
    "a small picture of a {}",
    "a product photo of a {}",
    "this is a {}",
    "a blurry photo of the {}",
    "a drawing of a {}",
    "a centered photo of a {}",
    "a catalogue image of a {}",
    "there is a {} in the picture",
)

EVAL_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a picture of the {}",
    "a cropped photo of the {}.",
    "an example of a {}",
    "a good photo of a {}.",
    "a bright photo of the {}.",
    "itap of a {}.",  # "I took a picture", one of CLIP's ImageNet templates
)

# Kept disjoint so that an evaluation template is never a training caption pattern.
assert not set(TRAIN_TEMPLATES) & set(EVAL_TEMPLATES), "train and eval templates must be disjoint"
