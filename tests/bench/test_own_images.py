import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # bench/ is scripts, not an installed package

from bench.own_images import distinct_images, main  # noqa: E402
from tests.colour_folder import write_colour_folder  # noqa: E402


def test_copies_of_a_picture_are_taken_once_and_one_under_two_categories_not_at_all(tmp_path):
    folder = write_colour_folder(tmp_path / "shapes", per_class=4)
    red = folder / "red_circles"
    (red / "copy.png").write_bytes((red / "000.png").read_bytes())  # the same bytes under another name
    (red / "link.png").symlink_to(red / "001.png")  # and as a link, as Open Clip Art ships some
    (folder / "blue_bars" / "stray.png").write_bytes((red / "002.png").read_bytes())  # under two categories
    items, counts = distinct_images(folder, ["blue_bars", "green_squares", "red_circles"], per_category=10)
    assert counts == {"files": 15, "distinct": 12, "under_two_categories": 1}
    assert len({digest for *_, digest in items}) == len(items) == 11  # 4 + 4 + 3: red's 002 belongs to no one
    assert (red / "002.png") not in {path for path, *_ in items}


def test_the_bench_runs_end_to_end_on_a_tiny_colour_folder(tmp_path, capsys):
    folder = write_colour_folder(tmp_path / "shapes", per_class=10)
    out = tmp_path / "results" / "own_images.json"
    result = main(["--smoke", "--folder", str(folder), "--out", str(out)])
    assert json.loads(out.read_text())["benchmark"] == "own_images" and out.with_suffix(".png").is_file()
    simclr, clip = result["simclr"], result["clip"]
    assert simclr["mode"] == "RGB" and len(simclr["mean"]) == 3 and clip["mode"] == "RGB"  # trained in colour
    assert simclr["held_out_images"] == clip["held_out_images"] > 0  # one split, on both sides
    assert simclr["train_images"] + simclr["held_out_images"] == result["data"]["images"] == 24
    for score in ("trained_knn_top1_pct", "random_init_knn_top1_pct", "raw_pixels_knn_top1_pct"):
        assert 0 <= simclr[score] <= 100
    assert clip["chance_pct"] == round(100 / len(set(clip["classes"])), 2) and 0 <= clip["zero_shot_top1_pct"] <= 100
    assert "CLIP (zero-shot on categories)" in capsys.readouterr().out
