"""Captions for labelled images, so class labels become image–text pairs for CLIP training.

Fashion-MNIST: a random training template filled with the class name or one of its synonyms,
sometimes followed by the kind of garment. Open Clip Art: "a drawing of a ..." with the
descriptive words of the file name; the top-level folder is the category. Torch-free.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from runtime.templates import TRAIN_TEMPLATES
from runtime.sources import to_pil

# The names zero-shot classification uses, in label order (runtime.fashion_mnist.FASHION_MNIST_CLASSES
# holds the data set's own spellings, such as "T-shirt/top", which read poorly in a sentence).
FASHION_MNIST_CLASS_NAMES: tuple[str, ...] = (
    "t-shirt", "trousers", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot",
)

# Words a caption may use for each class, the class name first. Varied wording keeps the text
# tower from keying on one token and gives it neighbours to generalise from.
FASHION_MNIST_SYNONYMS: dict[str, tuple[str, ...]] = {
    "t-shirt": ("t-shirt", "tee", "tee shirt", "top", "short-sleeved top"),
    "trousers": ("trousers", "trouser", "pants", "slacks", "jeans"),
    "pullover": ("pullover", "sweater", "jumper", "knitted sweater"),
    "dress": ("dress", "gown", "frock", "summer dress"),
    "coat": ("coat", "jacket", "overcoat", "winter coat"),
    "sandal": ("sandal", "flip-flop", "strappy sandal", "open shoe"),
    "shirt": ("shirt", "button-up shirt", "blouse", "collared shirt"),
    "sneaker": ("sneaker", "trainer", "running shoe", "athletic shoe"),
    "bag": ("bag", "handbag", "purse", "tote bag"),
    "ankle boot": ("ankle boot", "boot", "bootie", "short boot"),
}

# The kind of thing each class is: a caption sometimes names it ("..., a kind of footwear"), which
# teaches the towers words shared across classes, the bridge to classes never seen in training.
FASHION_MNIST_KINDS: dict[str, str] = {
    "t-shirt": "top", "trousers": "legwear", "pullover": "top", "dress": "clothing", "coat": "outerwear",
    "sandal": "shoe", "shirt": "top", "sneaker": "shoe", "bag": "accessory", "ankle boot": "shoe",
}


# What each class looks like, in words other classes share ("laces", "long sleeves", "straps"): the
# image tower can only land where training captions have been, so varied visual words widen that space.
FASHION_MNIST_DESCRIPTIONS: dict[str, tuple[str, ...]] = {
    "t-shirt": ("with short sleeves", "a collarless top with short sleeves", "a casual cotton top"),
    "trousers": ("with two long legs", "a long garment for the legs", "with a waistband and two legs"),
    "pullover": ("with long sleeves", "a knitted top with long sleeves", "a warm top pulled over the head"),
    "dress": ("a one-piece garment with a skirt", "a long garment worn by women", "with a fitted waist"),
    "coat": ("with long sleeves and buttons", "a long warm garment with a zip", "worn over other clothes"),
    "sandal": ("an open shoe with straps", "a flat shoe with thin straps", "a light summer shoe"),
    "shirt": ("a top with a collar and buttons", "with a collar", "a formal top with long sleeves"),
    "sneaker": ("a low shoe with laces", "a sports shoe with a rubber sole", "a casual shoe for running"),
    "bag": ("with a handle", "a container carried by hand", "with straps and a zip"),
    "ankle boot": ("a high shoe covering the ankle", "a boot with laces", "a leather shoe with a heel"),
}


def fashion_mnist_caption(label: int, rng: random.Random, templates: Sequence[str] = TRAIN_TEMPLATES,
                          kind_prob: float = 0.3, description_prob: float = 0.0) -> str:
    """One random caption for a Fashion-MNIST label: template × synonym, then with probability
    `kind_prob` the kind (", a kind of shoe") and with `description_prob` a description (", with a collar")."""
    name = FASHION_MNIST_CLASS_NAMES[label]
    caption = rng.choice(templates).format(rng.choice(FASHION_MNIST_SYNONYMS[name]))
    if rng.random() < kind_prob:
        caption += f", a kind of {FASHION_MNIST_KINDS[name]}"
    if rng.random() < description_prob:
        caption += f", {rng.choice(FASHION_MNIST_DESCRIPTIONS[name])}"
    return caption


class CaptionedImages:
    """Labelled uint8 images served as (transform(PIL image), caption), a fresh caption per access.

    `caption_for(label, rng)` writes the caption; the generator is seeded once from `seed`, so a
    run is repeatable while every epoch still sees new wording."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, caption_for: Callable[[int, random.Random], str],
                 transform: Callable | None = None, seed: int = 0):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, np.asarray(labels, np.int64)
        self.caption_for, self.transform = caption_for, transform
        self.rng = random.Random(seed)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        img = to_pil(self.images[index])
        return (self.transform(img) if self.transform else img), self.caption_for(int(self.labels[index]), self.rng)


# Open Clip Art file names: words joined by "_" or "-", often an author's name and a "_01" counter
# at the end, and cut to 24 characters before the counter (so a 24-character stem ends mid-word).
_OPENCLIPART_STEM_LIMIT = 24
_COUNTER = re.compile(r"[_-]?\d+$")
_WORD = re.compile(r"[a-z]+")
# The most frequent author names, which say nothing about the picture.
_OPENCLIPART_NOISE = frozenset({"architetto", "francesco", "frances", "rollandin", "arch", "archite", "png", "svg"})


def openclipart_category(relative_path: str | Path) -> str:
    """The top-level folder of a path under the Open Clip Art root, as words: "signs and symbols"."""
    parts = Path(relative_path).parts
    if len(parts) < 2:
        raise ValueError(f"{relative_path}: expected <category>/.../<name>.png under the Open Clip Art root")
    return parts[0].replace("_", " ").replace("-", " ").lower()


def openclipart_words(relative_path: str | Path) -> list[str]:
    """The descriptive words of a file name: counter, truncated last word and author noise removed."""
    stem = _COUNTER.sub("", Path(relative_path).stem.lower())
    words = _WORD.findall(stem)
    if len(stem) >= _OPENCLIPART_STEM_LIMIT and len(words) > 1:
        words = words[:-1]  # cut off mid-word by the 24-character limit
    return [w for w in words if w not in _OPENCLIPART_NOISE and len(w) > 1]


def openclipart_caption(relative_path: str | Path) -> str:
    """'animals/cute_cat_sitting.png' -> 'a drawing of a cute cat sitting'; the innermost folder
    stands in when the file name has no words ('shapes/stars/07.png' -> 'a drawing of a stars')."""
    words = openclipart_words(relative_path) or [Path(relative_path).parent.name.replace("_", " ").lower()]
    return "a drawing of a " + " ".join(words)


def openclipart_pairs(root: str | Path) -> list[tuple[Path, str, str]]:
    """(path, caption, category) for every PNG under the Open Clip Art root, sorted by path."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Open Clip Art folder {root} not found; install the Debian package `openclipart-png`")
    paths = sorted(p for p in root.rglob("*.png") if p.is_file() and p.parent != root)
    return [(p, openclipart_caption(p.relative_to(root)), openclipart_category(p.relative_to(root))) for p in paths]
