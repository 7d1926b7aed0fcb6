"""A tiny colour image folder with a class per subfolder, for the tests of training on a user's own
images (training, the CLI, bench/own_images.py): each class its own colour of shape on a clear
ground, at varied sizes, so colour alone tells the classes apart."""

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = {"red_circles": (220, 30, 30), "green_squares": (30, 180, 40), "blue_bars": (30, 60, 220)}


def write_colour_folder(root: Path, per_class: int = 20, seed: int = 0) -> Path:
    """root/<class>/<n>.png: RGBA images 40-90 px wide, a shape of the class's colour at a random place."""
    rng = np.random.default_rng(seed)
    for name, colour in CLASSES.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for n in range(per_class):
            width, height = int(rng.integers(40, 90)), int(rng.integers(40, 90))
            img = Image.new("RGBA", (width, height), (255, 255, 255, 0))
            x, y, r = int(rng.integers(8, width - 8)), int(rng.integers(8, height - 8)), int(rng.integers(6, 16))
            shade = tuple(int(np.clip(c + rng.integers(-25, 25), 0, 255)) for c in colour)
            draw = ImageDraw.Draw(img)
            if name.startswith("red"):
                draw.ellipse((x - r, y - r, x + r, y + r), fill=(*shade, 255))
            elif name.startswith("green"):
                draw.rectangle((x - r, y - r, x + r, y + r), fill=(*shade, 255))
            else:
                draw.rectangle((x - r // 3, 0, x + r // 3, height), fill=(*shade, 255))
            img.save(root / name / f"{n:03d}.png")
    return root

