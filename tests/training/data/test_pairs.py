import json

import pytest
from PIL import Image

from training.data.pairs import ManifestError, ManifestPairs, WebDatasetPairs, open_pairs, read_manifest, read_webdataset, write_webdataset


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "img"
    folder.mkdir()
    for name, colour in (("red.png", (255, 0, 0)), ("blue.png", (0, 0, 255))):
        Image.new("RGB", (8, 6), colour).save(folder / name)
    return folder


def test_csv_manifest_resolves_paths_against_its_folder(tmp_path, images):
    manifest = tmp_path / "pairs.csv"
    manifest.write_text('path,caption\nimg/red.png,a red square\nimg/blue.png,"a blue, flat square"\n')
    data = ManifestPairs(manifest)
    assert [c for _, c in data.pairs] == ["a red square", "a blue, flat square"]
    img, caption = data[0]
    assert img.mode == "RGB" and img.getpixel((0, 0)) == (255, 0, 0) and caption == "a red square"


def test_jsonl_manifest(tmp_path, images):
    manifest = tmp_path / "pairs.jsonl"
    manifest.write_text("\n".join(json.dumps({"path": f"img/{n}.png", "caption": n}) for n in ("red", "blue")) + "\n")
    assert [c for _, c in read_manifest(manifest)] == ["red", "blue"]


def test_manifest_errors_name_the_line(tmp_path, images):
    bad_header = tmp_path / "a.csv"
    bad_header.write_text("file,text\nimg/red.png,red\n")
    with pytest.raises(ManifestError, match=r"a.csv:1: .*caption"):
        read_manifest(bad_header)
    missing_file = tmp_path / "b.jsonl"
    missing_file.write_text('{"path": "img/red.png", "caption": "red"}\n{"path": "img/none.png", "caption": "x"}\n')
    with pytest.raises(ManifestError, match=r"b.jsonl:2: image .*none.png does not exist"):
        read_manifest(missing_file)
    missing_caption = tmp_path / "c.jsonl"
    missing_caption.write_text('{"path": "img/red.png"}\n')
    with pytest.raises(ManifestError, match=r"c.jsonl:1: needs a non-empty 'path' and 'caption'"):
        read_manifest(missing_caption)


def test_webdataset_round_trip(tmp_path):
    samples = [(f"{i:06d}", Image.new("L", (5, 5), i * 40), f"caption {i}") for i in range(3)]
    shard = write_webdataset(samples, tmp_path / "shard-000.tar")
    assert [(k, c) for k, _, c in read_webdataset(shard)] == [(k, c) for k, _, c in samples]
    data = open_pairs(shard, mode="L")
    assert isinstance(data, WebDatasetPairs) and data.captions == ["caption 0", "caption 1", "caption 2"]
    img, caption = data[2]
    assert img.getpixel((0, 0)) == 80 and caption == "caption 2"


def test_webdataset_reads_json_captions_and_names_bad_samples(tmp_path):
    import io
    import tarfile

    def add(tar, name, data):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    png = io.BytesIO()
    Image.new("RGB", (2, 2)).save(png, format="PNG")
    shard = tmp_path / "s.tar"
    with tarfile.open(shard, "w") as tar:
        add(tar, "a/x1.png", png.getvalue())
        add(tar, "a/x1.json", json.dumps({"caption": "from json"}).encode())
    assert [(k, c) for k, _, c in read_webdataset(shard)] == [("a/x1", "from json")]
    with tarfile.open(shard, "a") as tar:
        add(tar, "a/x2.txt", b"no image")
    with pytest.raises(ManifestError, match="'a/x2' has no image"):
        read_webdataset(shard)
