import dataclasses
import io
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runtime.preprocessing import (ImageLimits, ImageTooLarge, InvalidImage, PreprocessingSpec, UnsupportedImage,
                                   decode_image, normalize_image, preprocess_batch, preprocess_image)

MAX_BYTES, MAX_PIXELS = 1_000_000, 1_000_000
SPEC_RGB = PreprocessingSpec(mode="RGB", resize=8, crop=8, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
SPEC_L = PreprocessingSpec(mode="L", resize=8, crop=8, mean=(0.5,), std=(0.25,))


def encode(img: Image.Image, fmt: str = "PNG", **params) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **params)
    return buffer.getvalue()


def decode(data: bytes, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS) -> Image.Image:
    return decode_image(data, ImageLimits(max_bytes=max_bytes, max_pixels=max_pixels))


def noise(mode: str = "RGB", size: tuple[int, int] = (32, 24), seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)  # (H, W, C)
    return Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG claiming width x height in its header, with almost no pixel data (one short IDAT)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))


# --- errors -------------------------------------------------------------------------------------

def test_empty_body_is_invalid_input():
    with pytest.raises(InvalidImage, match="empty image"):
        decode(b"")


def test_body_over_max_bytes_is_too_large():
    data = encode(noise())
    with pytest.raises(ImageTooLarge, match="limit is 100 bytes"):
        decode(data, max_bytes=100)


@pytest.mark.parametrize("data", [b"hello, this is a text file\n", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n",
                                  b"\x00" * 64], ids=["text", "pdf", "zeros"])
def test_not_an_image_is_unsupported_media_type_naming_the_formats(data: bytes):
    with pytest.raises(UnsupportedImage, match="PNG, JPEG"):
        decode(data)


def test_a_format_outside_the_allowed_list_is_refused():
    with pytest.raises(UnsupportedImage):
        decode(encode(noise(), "TGA"))  # Pillow reads TGA, but the service does not offer it


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_pixel_data_is_invalid_input(fmt: str):
    data = encode(noise(size=(64, 64)), fmt)
    with pytest.raises(InvalidImage, match="truncated or corrupt"):
        decode(data[: len(data) * 2 // 3])


def test_image_cut_inside_its_header_is_invalid_input_not_wrong_type():
    data = encode(noise(), "PNG")
    with pytest.raises(InvalidImage, match="truncated or corrupt"):
        decode(data[:20])


def test_too_many_pixels_is_refused_from_the_header_before_decoding():
    # 3000 x 3000 claimed, no pixel data: a decode would say "truncated"; the header check says 413 first
    with pytest.raises(ImageTooLarge, match="9,000,000 pixels"):
        decode(png_header_only(3000, 3000), max_pixels=1_000_000)


def test_pillow_decompression_bomb_is_too_large():
    # 100k x 100k trips Pillow's own DecompressionBombError while opening, before our check runs
    with pytest.raises(ImageTooLarge, match=r"Pillow refuses to decode more than [\d,]+ pixels .* does not raise") as raised:
        decode(png_header_only(100_000, 100_000), max_pixels=10**12)
    assert "the limit is" not in str(raised.value)  # one limit per message: Pillow's is the one that stopped it


def test_a_message_names_one_limit_and_the_setting_that_moves_it():
    # 623 megapixels: over Pillow's bomb limit and over ours; the message is about ours, which is lower
    with pytest.raises(ImageTooLarge) as raised:
        decode(png_header_only(25_000, 24_920), max_pixels=40_000_000)
    assert str(raised.value) == ("image is 623,000,000 pixels; the limit is 40,000,000 pixels "
                                 "(EMBEDSERVE_MAX_IMAGE_PIXELS): downscale it, or raise the limit")
    with pytest.raises(ImageTooLarge, match=r"the limit is 10 bytes \(EMBEDSERVE_MAX_IMAGE_BYTES\)"):
        decode(png_header_only(10, 10), max_bytes=10)


def test_a_real_image_over_max_pixels_is_too_large():
    with pytest.raises(ImageTooLarge, match="32x24"):
        decode(encode(noise(size=(32, 24))), max_pixels=32 * 24 - 1)


@pytest.mark.parametrize("mode", ["1", "LA", "PA", "I", "F", "HSV", "YCbCr", "I;16B"])
def test_rarer_pillow_modes_still_preprocess(mode: str):
    # TIFF and friends can decode to these; none may fail with a server error
    for spec in (SPEC_RGB, SPEC_L):
        assert preprocess_image(Image.new(mode, (12, 9)), spec).shape == (spec.channels, 8, 8)


def test_a_pixel_mode_pillow_cannot_convert_is_unsupported_media_type():
    # a CIELab TIFF decodes to "LAB", which Pillow cannot turn into "L": the client's to re-encode, not a 500
    with pytest.raises(UnsupportedImage, match="'LAB'"):
        preprocess_image(decode(encode(Image.new("LAB", (12, 9)), "TIFF")), SPEC_L)


# --- modes and values ---------------------------------------------------------------------------

def test_decode_returns_a_fully_loaded_image_of_the_right_size():
    img = decode(encode(noise(size=(31, 17)), "JPEG"))
    assert img.size == (31, 17) and img.mode == "RGB" and img.format == "JPEG"


@pytest.mark.parametrize("spec", [SPEC_RGB, SPEC_L], ids=["rgb", "l"])
@pytest.mark.parametrize("make", [
    lambda: noise("RGB"),
    lambda: noise("RGBA"),
    lambda: noise("L"),
    lambda: noise("RGB").convert("P"),
    lambda: noise("RGB").convert("CMYK"),
    lambda: Image.fromarray(np.full((20, 30), 40000, np.uint16)),  # 16-bit greyscale
], ids=["RGB", "RGBA", "L", "P", "CMYK", "I16"])
def test_every_mode_gives_the_spec_shape(make, spec):
    img = make()
    fmt = "JPEG" if img.mode == "CMYK" else "PNG"
    out = preprocess_image(decode(encode(img, fmt)), spec)
    assert out.dtype == np.float32 and out.shape == (spec.channels, 8, 8)
    assert np.isfinite(out).all()


def test_values_are_scaled_then_standardised_per_channel():
    out = preprocess_image(decode(encode(Image.new("L", (10, 10), 128))), SPEC_L)
    np.testing.assert_allclose(out, (128 / 255 - 0.5) / 0.25, atol=1e-6)  # float32 arithmetic


def test_transparent_pixels_are_white():
    out = preprocess_image(decode(encode(Image.new("RGBA", (10, 10), (0, 0, 0, 0)))), SPEC_RGB)
    np.testing.assert_allclose(out, (1.0 - 0.5) / 0.25, rtol=1e-6)


def test_sixteen_bit_white_is_white():
    img = Image.fromarray(np.full((10, 10), 65535, np.uint16))
    out = preprocess_image(decode(encode(img)), SPEC_L)
    np.testing.assert_allclose(out, (1.0 - 0.5) / 0.25, rtol=1e-6)


def test_cmyk_jpeg_reads_as_pillows_rgb():
    data = encode(noise("RGB").convert("CMYK"), "JPEG")
    decoded = decode(data)
    assert decoded.mode == "CMYK"
    np.testing.assert_array_equal(preprocess_image(decoded, SPEC_RGB), preprocess_image(decoded.convert("RGB"), SPEC_RGB))


def test_exif_rotated_jpeg_is_turned_upright():
    pixels = np.zeros((10, 20, 3), np.uint8)  # (H, W, C): stored landscape, left half black
    pixels[:, 10:] = 255
    stored = Image.fromarray(pixels)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    rotated = decode(encode(stored, "JPEG", exif=exif.tobytes(), quality=95))
    plain = decode(encode(stored, "JPEG", quality=95))
    upright = plain.transpose(Image.Transpose.ROTATE_270)  # what a viewer shows: portrait 10 x 20
    spec = dataclasses.replace(SPEC_RGB, resize=10, crop=10)
    np.testing.assert_array_equal(preprocess_image(rotated, spec), preprocess_image(upright, spec))
    assert not np.array_equal(preprocess_image(rotated, spec), preprocess_image(plain, spec))


def test_shorter_side_is_resized_then_centre_cropped():
    # a 40 x 20 image whose middle 20 columns are white: resize to 10 x 5... crop 5 keeps only white
    pixels = np.zeros((20, 40), np.uint8)
    pixels[:, 10:30] = 255
    spec = dataclasses.replace(SPEC_L, resize=10, crop=10)  # shorter side 20 -> 10, so 20 x 10; centre 10 x 10
    out = preprocess_image(Image.fromarray(pixels), spec)
    assert out.shape == (1, 10, 10)
    np.testing.assert_allclose(out[:, :, 1:-1], (1.0 - 0.5) / 0.25, rtol=1e-6)  # inner columns: all white


def test_batch_stacks_images_of_different_sizes():
    images = [noise(size=(32, 24)), noise("L", size=(9, 40)), noise("RGBA", size=(8, 8))]
    batch = preprocess_batch(images, SPEC_RGB)
    assert batch.shape == (3, 3, 8, 8) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch[1], preprocess_image(images[1], SPEC_RGB))
    assert preprocess_batch([], SPEC_RGB).shape == (0, 3, 8, 8)


def test_the_serving_path_imports_no_torch():
    modules = "runtime.preprocessing, runtime.encoders.factory, runtime.encoders.onnx_runtime, runtime.encoders.triton"
    code = f"import sys, {modules}; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[2]).returncode == 0


# ---- normalize_image: every Pillow mode to plain "L" or "RGB" ----

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


@pytest.mark.parametrize("spec, shape", [(SPEC_L, (5, 8, 8)), (SPEC_RGB, (5, 8, 8, 3))])
def test_arrays_at_the_model_size_preprocess_bit_for_bit_as_images_do(spec, shape):
    from runtime.preprocessing import preprocess_arrays
    from runtime.sources import to_pil

    arrays = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    np.testing.assert_array_equal(preprocess_arrays(arrays, spec), preprocess_batch([to_pil(a) for a in arrays], spec))
    assert preprocess_arrays(arrays[:, :6, :6], spec) is None  # would need a resize: the general path does it
    assert preprocess_arrays(arrays.astype(np.float32), spec) is None


# Decoding at the model's size: memory per image bounded by the model's input, not the file's pixels.

def smooth(mode: str, size: tuple[int, int]) -> Image.Image:
    """A gradient: compresses to a small file at any size, and survives downscaling unchanged in look."""
    x, y = np.meshgrid(np.linspace(0, 255, size[0]), np.linspace(0, 255, size[1]))
    channels = [x, y, (x + y) / 2, 255 - x / 2][: {"L": 1, "RGB": 3, "RGBA": 4}[mode]]
    pixels = np.stack(channels, axis=-1).astype(np.uint8)  # (H, W, C)
    return Image.fromarray(pixels.squeeze(-1) if mode == "L" else pixels, mode)


@pytest.mark.parametrize("fmt, mode", [("JPEG", "RGB"), ("JPEG", "L"), ("PNG", "RGBA"), ("PNG", "L"), ("GIF", "P")])
def test_a_large_image_decodes_at_about_the_models_size_and_preprocesses_alike(fmt, mode):
    spec = SPEC_RGB if mode != "L" else SPEC_L
    img = smooth("RGB", (2400, 1800)).convert(mode) if mode == "P" else smooth(mode, (2400, 1800))
    data = encode(img, fmt)
    limits = ImageLimits(max_bytes=10_000_000, max_pixels=10_000_000)
    small = decode_image(data, limits, resize=spec.resize)
    need = 2 * spec.resize  # runtime.preprocessing.DECODE_MARGIN × resize
    assert need <= min(small.size) < 2 * need, small.size
    assert abs(small.width / small.height - 2400 / 1800) < 0.05  # the shape kept
    full = preprocess_image(decode_image(data, limits), spec)
    reduced = preprocess_image(small, spec)
    assert np.abs(full - reduced).max() < 0.1  # in units of std: a few grey levels at most


def test_a_small_image_is_decoded_exactly_as_without_a_size():
    data = encode(noise("RGB", (31, 30)))  # under 2 × DECODE_MARGIN × resize on its shorter side
    np.testing.assert_array_equal(np.asarray(decode_image(data, resize=8)), np.asarray(decode_image(data)))


def test_rotation_survives_the_reduced_decode():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    data = encode(smooth("RGB", (1200, 600)), "JPEG", exif=exif.tobytes())
    upright = normalize_image(decode_image(data, resize=8))
    assert upright.height > upright.width  # 600 wide, 1200 high once upright, at any scale


_PEAK_SCRIPT = """
import sys
from runtime.preprocessing import ImageLimits, decode_image, preprocess_image, PreprocessingSpec
data = open(sys.argv[1], "rb").read()
spec = PreprocessingSpec(mode="RGB", resize=64, crop=64, mean=(0.5,) * 3, std=(0.25,) * 3)
preprocess_image(decode_image(b"P6 1 1 255 " + bytes(3)), spec)  # every code path warm before the baseline
def peak():  # this process's peak RSS in bytes (VmHWM: its own, unlike ru_maxrss, which exec inherits from the parent)
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:"))
before = peak()
preprocess_image(decode_image(data, ImageLimits(max_bytes=10**7, max_pixels=40_000_000), resize=spec.resize), spec)
print(peak() - before)
"""


@pytest.mark.parametrize("fmt, mode", [("JPEG", "RGB"), ("PNG", "RGBA")])
def test_the_peak_memory_of_a_large_in_limit_image_is_bounded(tmp_path, fmt, mode):
    # 36 MP, in the default 40 MP limit: a full-size RGBA copy is 144 MB. A JPEG decodes at 1/8
    # scale; a PNG is decoded once at full size and reduced at once, without the further full-size
    # copies (orientation, mode conversion, alpha compositing) that used to come after it.
    side = 6000
    path = tmp_path / f"big.{fmt.lower()}"
    smooth(mode, (side, side)).save(path, fmt)
    assert path.stat().st_size < 10_000_000
    run = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(path)], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[2])
    assert run.returncode == 0, run.stderr
    grown = int(run.stdout.strip().splitlines()[-1])
    one_copy = side * side * len(mode)  # bytes of one decoded copy in the file's own mode
    bound = 16 * 2**20 if fmt == "JPEG" else int(1.3 * one_copy)
    assert grown < bound, f"peak grew {grown / 2**20:.0f} MiB decoding a {side}x{side} {fmt}; bound {bound / 2**20:.0f} MiB"


def test_transparency_is_composited_on_white_or_dropped_after_the_crop_as_the_spec_says():
    pixels = np.zeros((6, 6, 4), np.uint8)
    pixels[..., 0] = 200  # red hidden under alpha 0 (left half) and shown (right half)
    pixels[:, 3:, 3] = 255
    img = Image.fromarray(pixels, "RGBA")
    white = PreprocessingSpec("RGB", 6, 6, (0.0,) * 3, (1.0,) * 3)
    dropped = PreprocessingSpec("RGB", 6, 6, (0.0,) * 3, (1.0,) * 3, alpha="drop")  # open_clip's convert("RGB") last
    np.testing.assert_allclose(preprocess_image(img, white)[:, 0, 0], [1.0, 1.0, 1.0])
    np.testing.assert_allclose(preprocess_image(img, dropped)[:, 0, 0], [200 / 255, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(preprocess_image(img, dropped)[:, 0, 5], preprocess_image(img, white)[:, 0, 5])


def test_an_odd_crop_margin_is_rounded_as_torchvision_or_floored_as_transformers():
    img = Image.fromarray(np.arange(7, dtype=np.uint8)[None, :].repeat(4, 0) * 30, "L")  # 7 wide, 4 high: margin 3
    spec = PreprocessingSpec("L", 4, 4, (0.0,), (1.0,))
    assert preprocess_image(img, spec)[0, 0, 0] * 255 == pytest.approx(60)  # round(1.5) = 2
    floored = PreprocessingSpec("L", 4, 4, (0.0,), (1.0,), crop_offset="floor")
    assert preprocess_image(img, floored)[0, 0, 0] * 255 == pytest.approx(30)  # 3 // 2 = 1
