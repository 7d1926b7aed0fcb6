import random

import numpy as np

from runtime.templates import EVAL_TEMPLATES, TRAIN_TEMPLATES
from training.data.captions import (FASHION_MNIST_CLASS_NAMES, FASHION_MNIST_SYNONYMS, CaptionedImages,
                                    fashion_mnist_caption, openclipart_caption, openclipart_category,
                                    openclipart_pairs)


def test_train_and_eval_templates_are_disjoint_and_fillable():
    assert not set(TRAIN_TEMPLATES) & set(EVAL_TEMPLATES)
    assert all(t.count("{}") == 1 for t in TRAIN_TEMPLATES + EVAL_TEMPLATES)


def test_every_class_has_its_own_name_first_among_synonyms():
    assert [FASHION_MNIST_SYNONYMS[c][0] for c in FASHION_MNIST_CLASS_NAMES] == list(FASHION_MNIST_CLASS_NAMES)


def test_fashion_mnist_caption_uses_a_synonym_of_the_label_in_a_training_template():
    rng = random.Random(0)
    sneaker = FASHION_MNIST_CLASS_NAMES.index("sneaker")
    for _ in range(50):
        caption = fashion_mnist_caption(sneaker, rng, kind_prob=0.0)
        assert any(t.format(s) == caption for t in TRAIN_TEMPLATES for s in FASHION_MNIST_SYNONYMS["sneaker"])


def test_kind_is_appended_when_asked():
    caption = fashion_mnist_caption(FASHION_MNIST_CLASS_NAMES.index("ankle boot"), random.Random(0), kind_prob=1.0)
    assert caption.endswith(", a kind of shoe")


def test_captioned_images_pair_each_image_with_a_caption_of_its_label():
    images, labels = np.zeros((3, 28, 28), np.uint8), np.array([1, 8, 1])
    data = CaptionedImages(images, labels, lambda label, rng: FASHION_MNIST_CLASS_NAMES[label])
    assert len(data) == 3
    img, caption = data[1]
    assert img.size == (28, 28) and caption == "bag"


def test_openclipart_caption_keeps_the_descriptive_words():
    assert openclipart_caption("animals/cute_cat_sitting.png") == "a drawing of a cute cat sitting"
    assert openclipart_caption("food/fruit/red-apple_01.png") == "a drawing of a red apple"
    # 24 characters before the counter: the last word was cut off mid-word, so it is dropped
    assert openclipart_caption("office/box_with_folders_nicu_bu_01.png") == "a drawing of a box with folders nicu"
    assert openclipart_category("signs_and_symbols/flags/vatican.png") == "signs and symbols"


def test_openclipart_pairs_walks_category_folders(tmp_path):
    from PIL import Image

    (tmp_path / "animals").mkdir()
    Image.new("RGBA", (4, 4)).save(tmp_path / "animals" / "happy_dog_01.png")
    Image.new("RGBA", (4, 4)).save(tmp_path / "stray.png")  # no category folder: skipped
    assert openclipart_pairs(tmp_path) == [(tmp_path / "animals" / "happy_dog_01.png", "a drawing of a happy dog", "animals")]


def test_description_is_appended_when_asked():
    from training.data.captions import FASHION_MNIST_DESCRIPTIONS

    caption = fashion_mnist_caption(FASHION_MNIST_CLASS_NAMES.index("shirt"), random.Random(0), kind_prob=0.0,
                                    description_prob=1.0)
    assert any(caption.endswith(f", {d}") for d in FASHION_MNIST_DESCRIPTIONS["shirt"])
