import logging
from dataclasses import replace

import pytest
from PIL import Image

from runtime.fashion_mnist import FASHION_MNIST_MEAN
from training.data.image_defaults import with_data_defaults
from training.data.images import HELD_OUT, open_image_dataset
from training.methods.mae import MAEConfig
from training.methods.simclr import SimCLRConfig


def test_a_colour_folder_trains_in_colour_at_its_own_size_with_its_measured_statistics(colour_folder, caplog):
    with caplog.at_level(logging.INFO, logger="training.data.image_defaults"):
        config = with_data_defaults(SimCLRConfig(data=str(colour_folder)))
    assert config.mode == "RGB" and 40 <= config.image_size <= 64 and config.image_size % 4 == 0
    assert len(config.mean) == len(config.std) == 3 and all(0.8 < m < 1.0 for m in config.mean)  # a white ground
    assert config.mean[0] != config.mean[2]  # per channel: the classes differ in colour
    assert "--mode RGB" in caplog.text and "--image-size" in caplog.text  # the log says what was taken, and how to override
    assert with_data_defaults(config) is config  # filled: nothing is read again


def test_given_options_are_kept_and_a_grey_folder_stays_grey(tmp_path, colour_folder):
    given = with_data_defaults(SimCLRConfig(data=str(colour_folder), mode="L", image_size=32))
    assert (given.mode, given.image_size, len(given.mean)) == ("L", 32, 1)
    (tmp_path / "grey").mkdir()
    for n in range(6):
        Image.new("L", (200, 300), 40 * n).save(tmp_path / "grey" / f"{n}.png")
    grey = with_data_defaults(SimCLRConfig(data=str(tmp_path / "grey")))
    assert (grey.mode, grey.image_size) == ("L", 64)  # large images: the default input, not their 200 px
    assert with_data_defaults(SimCLRConfig(data="digits")).image_size == 28


def test_fashion_mnist_keeps_its_published_statistics(monkeypatch):
    import training.data.image_defaults as defaults

    monkeypatch.setattr(defaults, "open_image_dataset", lambda *a, **k: open_image_dataset("digits"))  # no 60k read
    assert with_data_defaults(SimCLRConfig(data="fashion-mnist")).mean == FASHION_MNIST_MEAN


@pytest.mark.parametrize("options, flag", [
    ({"mode": "RGB", "mean": (0.5,), "std": (0.2,)}, r"--mode RGB has 3 channel\(s\)"),
    ({"mean": (0.5, 0.5, 0.5)}, "give --mean and --std together"),
    ({"image_size": 4}, "--image-size must be between"),
    ({"held_out_fraction": 1.0}, "--held-out-fraction"),
    ({"batch_size": 0}, "--batch-size must be at least 1"),
])
def test_options_that_cannot_work_are_refused_when_the_config_is_made(options, flag):
    with pytest.raises(ValueError, match=flag):
        SimCLRConfig(**options)
    with pytest.raises(ValueError, match="a multiple of --patch-size"):
        replace(MAEConfig(), image_size=30)


def test_the_held_out_part_is_the_same_whatever_the_seed_and_apart_from_training(colour_folder):
    def part(split, seed=0):
        dataset = open_image_dataset(str(colour_folder), split, "RGB", None, seed=seed, held_out_fraction=0.3)
        return {path.relative_to(colour_folder).as_posix() for path, _ in dataset.samples}

    train, held_out = part("train"), part(HELD_OUT)
    assert len(train) + len(held_out) == 60 and not train & held_out and 8 <= len(held_out) <= 30
    assert part(HELD_OUT, seed=5) == held_out
    assert part("train") == train and open_image_dataset(str(colour_folder), HELD_OUT, held_out_fraction=0.0).samples == []


def test_a_manifest_s_category_column_labels_its_images(tmp_path, colour_folder):
    rows = ["path,caption,category"] + [f"{p.relative_to(colour_folder).as_posix()},a shape,{p.parent.name}"
                                        for p in sorted(colour_folder.rglob("*.png"))[::3]]
    rows.append("red_circles/000.png,an unlabelled row,")
    (colour_folder / "train.csv").write_text("\n".join(rows) + "\n")
    dataset = open_image_dataset(str(colour_folder / "train.csv"), "train", "RGB")
    assert dataset.classes == ["blue_bars", "green_squares", "red_circles"]
    assert dataset.samples[-1][1] == -1 and {label for _, label in dataset.samples[:-1]} == {0, 1, 2}
    image, label = dataset[0]
    assert image.mode == "RGB" and label == 0
