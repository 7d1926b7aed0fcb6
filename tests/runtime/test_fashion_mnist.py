import struct

import numpy as np
import pytest

from runtime.fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist, read_idx


def test_reads_uint8_images_gzipped_and_plain(tmp_path, write_idx):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", images)
    write_idx(tmp_path / "a", images)
    for name in ("a.gz", "a"):
        out = read_idx(tmp_path / name)
        assert out.dtype == np.uint8 and out.shape == (2, 3, 4)
        np.testing.assert_array_equal(out, images)


def test_reads_big_endian_int32(tmp_path, write_idx):
    values = np.array([1, -2, 70000], dtype=np.int32)
    write_idx(tmp_path / "b", values, type_code=0x0C)
    np.testing.assert_array_equal(read_idx(tmp_path / "b"), values)


def test_rejects_bad_magic_and_truncation(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x01\x05")
    with pytest.raises(ValueError, match="not an IDX"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(struct.pack(">BBBBI", 0, 0, 8, 1, 5) + b"\x01\x02")
    with pytest.raises(ValueError, match="bytes follow"):
        read_idx(tmp_path / "short")


def test_load_fashion_mnist_from_a_tiny_folder(tmp_path, write_idx):
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = np.array([0, 9, 3, 3, 1], dtype=np.uint8)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels)  # uncompressed works too
    got_images, got_labels = load_fashion_mnist(tmp_path, "test")
    np.testing.assert_array_equal(got_images, images)
    assert got_labels.dtype == np.int64 and got_labels.tolist() == [0, 9, 3, 3, 1]
    assert len(FASHION_MNIST_CLASSES) == 10 and FASHION_MNIST_CLASSES[9] == "Ankle boot"


def test_missing_files_name_the_debian_package(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path, "train")
