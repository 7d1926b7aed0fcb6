import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # bench/ is scripts, not an installed package

from bench.charts import CHARTS, RESULTS, bench_name, main, write_chart  # noqa: E402

SERVE = {
    "benchmark": "serve_images", "date": "2026-12-01T10:48:07+00:00",
    "machine": {"cpu": "Test CPU", "cores": 2, "gpu": "none", "load_average_1_5_15min": [1.0, 1.0, 1.0]},
    "model": {"name": "tiny", "version": "v1"},
    "results": [{"mode": mode, "concurrency": c, "images_per_s": base * c ** 0.5, "p50_ms": 2.0 * c}
                for mode, base in (("batched", 300.0), ("raw onnxruntime", 1200.0)) for c in (1, 8, 32)],
}


def test_a_bench_result_becomes_a_png_chart_beside_its_json(tmp_path, capsys):
    path = tmp_path / "serve_images_run2.json"
    path.write_text(json.dumps(SERVE))
    out = write_chart(path)
    assert out == tmp_path / "serve_images_run2.png" and capsys.readouterr().out == f"wrote {out}\n"
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (1100, 430)
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3).astype(int)
    # ours in the first tab10 blue, the peer (raw onnxruntime) in grey: both lines are drawn
    for colour in ((31, 119, 180), (128, 128, 128)):
        assert (np.abs(pixels - np.array(colour)).sum(axis=1) < 30).sum() > 200, colour


def test_a_result_no_chart_knows_is_reported_and_not_raised(tmp_path, capsys):
    path = tmp_path / "mystery.json"
    path.write_text(json.dumps({"benchmark": "mystery"}))
    assert write_chart(path) is None and not path.with_suffix(".png").exists()
    assert "no chart knows mystery.json" in capsys.readouterr().err


def test_every_recorded_result_has_a_chart_and_charts_redraws_from_the_json(tmp_path):
    recorded = sorted(RESULTS.glob("*.json"))
    assert recorded and all(bench_name(p, json.loads(p.read_text())) in CHARTS for p in recorded)
    copy = tmp_path / "soak.json"
    copy.write_bytes((RESULTS / "soak.json").read_bytes())
    assert main([str(copy)]) == [tmp_path / "soak.png"]
