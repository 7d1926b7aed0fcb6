import json
import logging
import sys

import pytest
from PIL import Image

from training.curves import curves_path, plot_curves, read_run, write_curves


def write_log(path, records) -> None:
    path.write_text("".join(json.dumps({"method": "simclr", **r}) + "\n" for r in records))


def run(epochs: int, steps_per_epoch: int = 4, start_epoch: int = 0, knn=(50.0, 60.0, 65.0, 70.0)):
    records = [{"kind": "start", "epoch": start_epoch, "step": start_epoch * steps_per_epoch}]
    for epoch in range(start_epoch, epochs):
        for s in range(1, steps_per_epoch + 1):
            step = epoch * steps_per_epoch + s
            records.append({"kind": "step", "epoch": epoch + 1, "step": step, "loss": 5.0 / step})
        records.append({"kind": "epoch", "epoch": epoch + 1, "step": (epoch + 1) * steps_per_epoch,
                        "loss": 5.0 / (epoch + 1), "eval": {"knn_top1_pct": knn[epoch]}})
    return records


def test_the_curves_are_a_png_beside_the_log_with_a_panel_for_the_evaluation(tmp_path):
    log = tmp_path / "simclr.jsonl"
    write_log(log, run(epochs=3))
    path = plot_curves(log)
    assert path == curves_path(log) == tmp_path / "simclr.png"
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (1100, 420)  # two panels: loss, and kNN per epoch
    write_log(log, [{k: v for k, v in r.items() if k != "eval"} for r in run(epochs=3)])
    with Image.open(plot_curves(log, tmp_path / "loss-only.png")) as image:
        assert image.size == (650, 420)  # no evaluation logged: the loss alone


def test_only_the_latest_run_is_drawn_and_a_resumed_run_continues_it(tmp_path):
    log = tmp_path / "a.jsonl"
    first = run(epochs=2)
    crashed = run(epochs=4)[:-3]  # a fresh run that logged into epoch 4 and died before saving it
    resumed = run(epochs=4, start_epoch=3)  # resumed from the checkpoint after epoch 3
    write_log(log, first + crashed + resumed)
    records = read_run(log)
    steps = [r["step"] for r in records if r["kind"] == "step"]
    assert steps == list(range(1, 17))  # the first run dropped, the crashed epoch's steps replaced
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1, 2, 3, 4]


def test_without_matplotlib_training_logs_the_install_hint_once_and_goes_on(tmp_path, monkeypatch, caplog):
    log = tmp_path / "a.jsonl"
    write_log(log, run(epochs=2))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    monkeypatch.setattr("training.curves._warned_missing", False)
    with caplog.at_level(logging.INFO, logger="training.curves"):
        assert write_curves(log) is None and write_curves(log) is None
    hints = [r.message for r in caplog.records if "pip install 'embedserve[plot]'" in r.message]
    assert len(hints) == 1 and not curves_path(log).exists()


def test_a_log_with_nothing_to_draw_is_a_clear_error(tmp_path):
    log = tmp_path / "a.jsonl"
    write_log(log, [{"kind": "start", "epoch": 0, "step": 0}])
    with pytest.raises(ValueError, match="no step or epoch record"):
        plot_curves(log)


def test_a_run_log_appends_records_read_run_reads_each_tagged_with_its_method(tmp_path):
    from training.curves import RunLog

    path = tmp_path / "logs" / "w2v.jsonl"
    for start in (0, 0):  # a second fresh run appends, and read_run keeps only it
        log = RunLog(path, "word2vec")
        log.write({"kind": "start", "epoch": 0, "step": start, "step_unit": "words"})
        log.write({"kind": "step", "epoch": 1, "step": 100, "loss": 2.0})
        log.close()
    assert len(path.read_text().splitlines()) == 4
    assert read_run(path) == [{"method": "word2vec", "kind": "start", "epoch": 0, "step": 0, "step_unit": "words"},
                              {"method": "word2vec", "kind": "step", "epoch": 1, "step": 100, "loss": 2.0}]
    assert plot_curves(path).is_file()
