import numpy as np
import pytest
from PIL import Image

from index.plot import IndexMapConfig, colour_field, colour_groups, plot_index_map, sample_index
from index.vector_index import VectorIndex

CLASSES = ("boot", "coat", "dress", "bag")
TAB10 = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40)]  # the first four colours of matplotlib's tab10


def clustered_index(n_per_class: int = 50, dim: int = 16) -> VectorIndex:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(len(CLASSES)), n_per_class)
    vectors = rng.normal(size=(len(CLASSES), dim))[labels] + 0.3 * rng.normal(size=(len(labels), dim))
    return VectorIndex.build(np.arange(len(labels)) * 3, vectors, [{"class": CLASSES[c], "label": int(c)} for c in labels])


def test_the_map_is_a_png_of_the_configured_size_with_a_colour_per_class(tmp_path):
    path = plot_index_map(clustered_index(), tmp_path / "map.png", IndexMapConfig(size_px=600))
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (600, 600)
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3).astype(int)
    for colour in TAB10:  # every class is drawn in its own colour (points are drawn at 75% opacity)
        near = np.abs(pixels - np.array(colour)).sum(axis=1) < 90
        assert near.sum() > 50, colour


def test_the_sample_is_bounded_and_seeded():
    index = clustered_index()
    a, b = sample_index(index, 60, seed=1), sample_index(index, 60, seed=1)
    assert len(a.ids) == 60 and np.array_equal(a.ids, b.ids) and a.vectors.shape == (60, 16)
    assert not np.array_equal(a.ids, sample_index(index, 60, seed=2).ids)
    assert [m["class"] for m in a.metadata] == [index.metadata([i])[0]["class"] for i in a.ids]
    assert len(sample_index(index, 10_000).ids) == len(index)


def test_the_colour_field_is_found_or_named():
    assert colour_field([{"label": 3}, {"path": "x"}]) == "label"
    assert colour_field([{"class": "a", "label": 1}]) == "class"  # class before label
    assert colour_field([{"path": "x"}]) is None
    with pytest.raises(ValueError, match="no sampled item has metadata field 'colour'; fields: \\['path'\\]"):
        colour_field([{"path": "x"}], "colour")
    groups = colour_groups([f"c{i}" for i in range(30)] + [None])
    assert len(set(groups)) == 20 and "other" in groups  # 19 values and "other"
