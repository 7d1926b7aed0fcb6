import numpy as np
from PIL import Image

from training.data.images import ImageFolder, load_digits_images


def test_image_folder_with_classes_and_flat(tmp_path):
    for cls, colour in (("cat", 10), ("dog", 200)):
        (tmp_path / "labelled" / cls).mkdir(parents=True)
        for i in range(2):
            Image.new("RGBA", (5, 4), (colour, colour, colour, 255)).save(tmp_path / "labelled" / cls / f"{i}.png")
    (tmp_path / "labelled" / "dog" / "notes.txt").write_text("not an image")
    ds = ImageFolder(tmp_path / "labelled", mode="L")
    assert ds.classes == ["cat", "dog"] and len(ds) == 4
    img, label = ds[3]
    assert label == 1 and img.mode == "L" and np.asarray(img)[0, 0] == 200
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (3, 3)).save(tmp_path / "flat" / "x.jpg")
    flat = ImageFolder(tmp_path / "flat", mode="RGB", transform=lambda im: im.size)
    assert flat.classes == [] and flat[0] == ((3, 3), -1)


def test_digits_are_upscaled_and_padded():
    images, labels = load_digits_images(size=28, digit_size=20)
    assert images.shape == (1797, 28, 28) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and set(labels.tolist()) == set(range(10))
    assert images[:, :4].max() == 0 and images[:, 4:24, 4:24].max() == 255
