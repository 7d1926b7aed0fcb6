"""Every bench in bench/ runs, every time: each script there, found by looking (so a bench added
tomorrow is run too), runs with `--smoke` (the same code end to end at its smallest sizes, on tiny
models it makes) and must exit 0 and write a JSON whose rows hold the fields the README's table
for it reads."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
SMOKE_TIMEOUT_S = 600  # a hung bench fails here rather than hanging the suite; a smoke run takes seconds
# Scripts in bench/ that are not benches, and why.
NOT_BENCHES = {"charts": "redraws the charts of results already written; it measures nothing"}

# Per bench: where its rows are in its JSON, and the fields the README's table for it reads from each.
# A path is keys joined by dots, "*" for every value of a mapping or list; "" is the whole JSON (one row).
# A bench not named here gets the default: a non-empty "rows" list (and, as for every bench, machine and date).
# An entry may name a bench still on its way from another branch: the scripts found decide what runs.
EXPECTED_ROWS = {
    "images_vs_infinity": {"results": ["server", "input", "concurrency", "items_per_s", "p50_ms", "p99_ms"]},
    "index_search": {"rows": ["dataset", "method", "params", "recall_at_10", "queries_per_s", "speedup_vs_flat", "build_s"]},
    "jobs": {"rows": ["measurement", "ratio"]},
    "own_images": {"simclr": ["trained_knn_top1_pct", "raw_pixels_knn_top1_pct"], "clip": ["zero_shot_top1_pct", "chance_pct"]},
    "runtimes": {"rows": ["model", "tower", "runtime", "rows_per_s", "x_onnx_fp32", "recorded_top1_change_pct",
                          "min_cosine_to_reference_here"]},
    "scores": {"image_encoders.*.*": ["query_scores", "median_scores", "knn_top1_pct"],
               "clip.*.*": ["zero_shot_top1", "text_to_image_recall", "median_scores"]},
    "serve_images": {"results": ["mode", "concurrency", "images_per_s", "p50_ms", "p99_ms"]},
    "soak": {"": ["capacity_per_s", "offered_per_s", "served_per_s", "statuses", "five_xx", "p50_ms", "p99_ms",
                  "healthz_p50_ms", "healthz_p99_ms", "jobs_submitted", "job_states", "rss_start_mb", "rss_end_mb",
                  "server_exit_code_on_sigterm"]},
    "text_vs_infinity": {"results": ["server", "input", "concurrency", "requests_per_s", "p50_ms", "p99_ms", "cpu_ms_per_request"]},
    "vision_ssl": {"rows": ["name", "epochs", "dim", "knn_top1_pct", "linear_top1_pct"]},
    "word2vec_vs_gensim": {f"{arch}.summary.{trainer}": [
        "raw_words_per_second", "raw_words_per_cpu_second", "train_seconds", "analogy_semantic", "analogy_syntactic",
        "analogy_total", "wordsim353_spearman", "simlex999_spearman"] for arch in ("skipgram", "cbow") for trainer in ("ours", "gensim")},
    "zero_shot": {"results.*": ["fashion_mnist", "image_to_text_recall", "text_to_image_recall"],
                  "results.all_classes": ["openclipart_top1"]},
}
DEFAULT_ROWS = {"rows": []}


def bench_scripts() -> list[str]:
    """The names of bench/*.py that run as scripts (a __main__ block), less NOT_BENCHES."""
    return sorted(p.stem for p in BENCH.glob("*.py")
                  if 'if __name__ == "__main__":' in p.read_text() and p.stem not in NOT_BENCHES)


def rows_at(result, path: str) -> list:
    """The rows at `path` in `result` (see EXPECTED_ROWS): a list's items, or a mapping as one row."""
    found = [result]
    for key in path.split(".") if path else []:
        step = []
        for value in found:
            if key == "*":
                step += list(value.values()) if isinstance(value, dict) else list(value)
            else:
                assert isinstance(value, dict) and key in value, f"no {key!r} on the way to {path!r} (keys: {list(value)[:20]})"
                step.append(value[key])
        found = step
    return [row for value in found for row in (value if isinstance(value, list) else [value])]


def test_the_benches_are_found_by_looking():
    found = bench_scripts()
    assert {"jobs", "serve_images", "text_vs_infinity", "soak"} <= set(found) and "charts" not in found


@pytest.mark.parametrize("name", bench_scripts())
def test_the_bench_runs_small_and_writes_the_fields_its_table_reads(name, tmp_path):
    out = tmp_path / "results" / f"{name}.json"
    # run from an empty folder: a bench's ./artifacts default then finds nothing of the user's
    work = tmp_path / "cwd"
    work.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, str(BENCH / f"{name}.py"), "--smoke", "--out", str(out)], cwd=work, env=env,
                         capture_output=True, text=True, timeout=SMOKE_TIMEOUT_S)
    said = f"\n--- stdout (end) ---\n{run.stdout[-3000:]}\n--- stderr (end) ---\n{run.stderr[-3000:]}"
    assert run.returncode == 0, f"bench/{name}.py --smoke exited {run.returncode}: it must run at its smallest sizes{said}"
    assert out.is_file(), f"bench/{name}.py --smoke --out {out} wrote nothing there{said}"
    result = json.loads(out.read_text())
    assert result.get("date") and result.get("machine"), f"{name}: the JSON must carry the machine and the date"
    for path, fields in EXPECTED_ROWS.get(name, DEFAULT_ROWS).items():
        rows = rows_at(result, path)
        assert rows, f"{name}: no rows at {path!r}"
        for row in rows:
            missing = [f for f in fields if f not in row]
            assert not missing, f"{name}: a row at {path!r} lacks {missing}, which the README's table reads: {row}"
