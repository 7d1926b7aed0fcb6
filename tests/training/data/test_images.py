import io

import numpy as np
import pytest
from PIL import Image

from training.data.images import ImageFolder, load_digits_images, normalize_image, preprocess_image
from training.data.transforms import EvalTransform


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img)


@pytest.mark.parametrize("target", ["L", "RGB"])
def test_plain_modes_convert_to_target(target):
    rgb = Image.new("RGB", (3, 2), (200, 100, 50))
    grey = Image.new("L", (3, 2), 77)
    for img in (rgb, grey):
        out = normalize_image(img, target)
        assert out.mode == target and out.size == (3, 2)
    assert pixels(normalize_image(grey, "RGB"))[0, 0].tolist() == [77, 77, 77]
    assert pixels(normalize_image(rgb, "L"))[0, 0] == round(0.299 * 200 + 0.587 * 100 + 0.114 * 50)


def test_rgba_is_composited_on_white():
    img = Image.new("RGBA", (2, 1))
    img.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent black -> white
    img.putpixel((1, 0), (0, 0, 0, 255))  # opaque black stays black
    out = pixels(normalize_image(img, "RGB"))
    assert out[0, 0].tolist() == [255, 255, 255] and out[0, 1].tolist() == [0, 0, 0]
    half = normalize_image(Image.new("RGBA", (1, 1), (0, 0, 0, 128)), "L")
    assert abs(int(pixels(half)[0, 0]) - 127) <= 1


def test_la_and_one_bit():
    la = Image.new("LA", (1, 1), (0, 0))
    assert pixels(normalize_image(la, "L"))[0, 0] == 255
    one = Image.new("1", (2, 1), 0)
    one.putpixel((1, 0), 1)
    assert pixels(normalize_image(one, "L")).tolist() == [[0, 255]]


def test_palette_with_and_without_transparency():
    p = Image.new("P", (2, 1))
    p.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    p.putpixel((0, 0), 0)
    p.putpixel((1, 0), 1)
    assert pixels(normalize_image(p, "RGB")).tolist() == [[[255, 0, 0], [0, 0, 255]]]
    p.info["transparency"] = 1  # palette index 1 is transparent -> white
    assert pixels(normalize_image(p, "RGB")).tolist() == [[[255, 0, 0], [255, 255, 255]]]


def test_cmyk():
    out = normalize_image(Image.new("CMYK", (1, 1), (0, 255, 255, 0)), "RGB")  # magenta + yellow ink = red
    assert pixels(out)[0, 0].tolist() == [255, 0, 0]


@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_sixteen_bit_is_scaled_to_eight(mode):
    values = np.array([[0, 257 * 100, 65535]], dtype=np.uint16 if mode == "I;16" else np.int32)
    img = Image.fromarray(values)
    assert img.mode == mode
    assert pixels(normalize_image(img, "L")).tolist() == [[0, 100, 255]]


def test_sixteen_bit_png_round_trip(tmp_path):
    Image.fromarray(np.full((2, 2), 65535, np.uint16)).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as img:
        assert pixels(normalize_image(img, "L")).tolist() == [[255, 255], [255, 255]]


def test_exif_rotated_jpeg_is_made_upright(tmp_path):
    img = Image.new("RGB", (40, 20), (255, 255, 255))
    img.paste((0, 0, 0), (0, 0, 20, 20))  # black left half
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    img.save(tmp_path / "phone.jpg", exif=exif.tobytes(), quality=95)
    with Image.open(tmp_path / "phone.jpg") as opened:
        assert opened.size == (40, 20)
        out = normalize_image(opened, "L")
    assert out.size == (20, 40)  # upright: taller than wide
    top, bottom = pixels(out)[:15].mean(), pixels(out)[25:].mean()
    assert top < 40 and bottom > 215  # the black half ends up on top after a clockwise turn


def test_rejects_unknown_target_mode():
    with pytest.raises(ValueError, match="mode"):
        normalize_image(Image.new("L", (1, 1)), "CMYK")


def test_image_folder_with_classes_and_flat(tmp_path):
    for cls, colour in (("cat", 10), ("dog", 200)):
        (tmp_path / "labelled" / cls).mkdir(parents=True)
        for i in range(2):
            Image.new("RGBA", (5, 4), (colour, colour, colour, 255)).save(tmp_path / "labelled" / cls / f"{i}.png")
    (tmp_path / "labelled" / "dog" / "notes.txt").write_text("not an image")
    ds = ImageFolder(tmp_path / "labelled", mode="L")
    assert ds.classes == ["cat", "dog"] and len(ds) == 4
    img, label = ds[3]
    assert label == 1 and img.mode == "L" and pixels(img)[0, 0] == 200
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (3, 3)).save(tmp_path / "flat" / "x.jpg")
    flat = ImageFolder(tmp_path / "flat", mode="RGB", transform=lambda im: im.size)
    assert flat.classes == [] and flat[0] == ((3, 3), -1)


def test_digits_are_upscaled_and_padded():
    images, labels = load_digits_images(size=28, digit_size=20)
    assert images.shape == (1797, 28, 28) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and set(labels.tolist()) == set(range(10))
    assert images[:, :4].max() == 0 and images[:, 4:24, 4:24].max() == 255


def test_preprocess_image_reproduces_eval_transform():
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (37, 50, 3), dtype=np.uint8), "RGB")
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    transform = EvalTransform(24, "RGB", mean, std, resize=29)
    expected = transform(photo).numpy()
    got = preprocess_image(photo, transform.spec)
    assert got.shape == expected.shape == (3, 24, 24)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    grey = EvalTransform(28, "L", (0.286,), (0.353,))
    digit = Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8), "L")
    np.testing.assert_allclose(preprocess_image(digit, grey.spec), grey(digit).numpy(), atol=1e-5)
    buffer = io.BytesIO()
    photo.save(buffer, "PNG")
    assert preprocess_image(Image.open(buffer), grey.spec).shape == (1, 28, 28)
