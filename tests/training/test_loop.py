import json
import math
from dataclasses import replace

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from training.checkpoint import load_checkpoint
from training.loop import LoopConfig, default_param_groups, fit, warmup_cosine


class LinearRegression:
    """A toy method: fit y = X w with mean squared error; random noise in the step checks RNG restore."""

    name = "toy"

    def __init__(self):
        torch.manual_seed(0)
        self.model = nn.Linear(4, 1)

    def param_groups(self, weight_decay):
        return default_param_groups(self.model, weight_decay)

    def training_step(self, batch):
        x, y = batch
        x = x + 0.01 * torch.randn_like(x)  # uses the global RNG, as augmentations do
        loss = nn.functional.mse_loss(self.model(x).squeeze(1), y)
        return loss, {"abs_error": (self.model(x).squeeze(1) - y).abs().mean().detach()}

    def checkpoint_extra(self):
        return {"config": {"toy": True}}


def toy_data(n: int = 64) -> TensorDataset:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(n, 4, generator=generator)
    return TensorDataset(x, x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.5)


def config(tmp_path, epochs: int, **overrides) -> LoopConfig:
    settings = dict(epochs=epochs, batch_size=8, lr=0.05, weight_decay=0.0, warmup_epochs=1, device="cpu",
                    checkpoint_path=str(tmp_path / "toy.pt"), log_path=str(tmp_path / "toy.jsonl"),
                    log_every_steps=4, progress=False)
    return LoopConfig(**{**settings, **overrides})


def test_loss_goes_down_and_log_is_written(tmp_path):
    method = LinearRegression()
    data = toy_data()
    with torch.no_grad():
        before = nn.functional.mse_loss(method.model(data.tensors[0]).squeeze(1), data.tensors[1]).item()
    summary = fit(method, data, config(tmp_path, epochs=6, lr=0.3))
    assert summary["step"] == 6 * 8 and summary["loss"] < before / 10
    records = [json.loads(line) for line in (tmp_path / "toy.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["kind"] == "epoch"]
    steps = [r for r in records if r["kind"] == "step"]
    assert [r["epoch"] for r in epochs] == [1, 2, 3, 4, 5, 6]
    assert epochs[-1]["loss"] < epochs[0]["loss"]
    assert {"loss", "lr", "images_per_s", "abs_error"} <= set(steps[0])


def test_resume_continues_where_it_stopped_and_matches_an_uninterrupted_run(tmp_path):
    straight = LinearRegression()
    fit(straight, toy_data(), config(tmp_path / "a", epochs=4))

    # run the first 2 epochs of the same 4-epoch schedule, as a crash after epoch 2 would leave it
    partial = LinearRegression()
    first_half = config(tmp_path / "b", epochs=4)
    _stop_after_epochs(partial, first_half, stop=2)
    saved = load_checkpoint(tmp_path / "b" / "toy.pt")
    assert saved["epoch"] == 2 and saved["step"] == 2 * 8 and saved["config"] == {"toy": True}

    resumed = LinearRegression()  # fresh weights: everything must come from the checkpoint
    summary = fit(resumed, toy_data(), first_half, resume=True)
    assert summary["step"] == 4 * 8
    assert load_checkpoint(tmp_path / "b" / "toy.pt")["epoch"] == 4
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)


class _Stop(Exception):
    pass


def _stop_after_epochs(method, cfg: LoopConfig, stop: int) -> None:
    """Run fit but crash at the first step of epoch `stop + 1`, after epoch `stop` was checkpointed."""
    steps_per_epoch = 8
    original = method.training_step
    calls = {"n": 0}

    def training_step(batch):
        if calls["n"] == stop * steps_per_epoch:
            raise _Stop
        calls["n"] += 1
        return original(batch)

    method.training_step = training_step
    with pytest.raises(_Stop):
        fit(method, toy_data(), cfg)


def test_warmup_then_cosine_schedule():
    assert warmup_cosine(0, 4, 20) == pytest.approx(0.25)
    assert warmup_cosine(3, 4, 20) == pytest.approx(1.0)
    assert warmup_cosine(12, 4, 20) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert warmup_cosine(20, 4, 20) == pytest.approx(0.0)


def test_weight_decay_skips_biases():
    layer = nn.Linear(3, 2)
    groups = default_param_groups(layer, 0.1)
    decayed, kept = ([id(p) for p in g["params"]] for g in groups)
    assert (decayed, groups[0]["weight_decay"]) == ([id(layer.weight)], 0.1)
    assert (kept, groups[1]["weight_decay"]) == ([id(layer.bias)], 0.0)


class EvaluatedRegression(LinearRegression):
    """The toy method with an evaluation hook, as the vision methods have (their kNN monitor)."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def evaluate(self):
        self.calls += 1
        return {"abs_weight": self.model.weight.detach().abs().sum()}


def test_the_method_evaluation_is_logged_per_epoch_and_drawn_with_the_loss(tmp_path):
    from PIL import Image

    method = EvaluatedRegression()
    summary = fit(method, toy_data(), config(tmp_path, epochs=4, eval_every_epochs=3))
    records = [json.loads(line) for line in (tmp_path / "toy.jsonl").read_text().splitlines()]
    assert records[0]["kind"] == "start" and records[0]["step"] == 0
    evaluated = {r["epoch"]: r["eval"] for r in records if r["kind"] == "epoch" and "eval" in r}
    assert sorted(evaluated) == [3, 4] and method.calls == 2  # every 3rd epoch, and the last
    assert isinstance(evaluated[4]["abs_weight"], float)
    assert summary["curves_path"] == str(tmp_path / "toy.png")
    with Image.open(summary["curves_path"]) as image:
        assert image.format == "PNG" and image.size == (1100, 420)


def test_small_data_gets_smaller_batches_where_asked_and_a_warning_either_way(tmp_path, caplog):
    config = LoopConfig(epochs=2, batch_size=256, lr=0.05, warmup_epochs=0.1, device="cpu", progress=False,
                        checkpoint_path=str(tmp_path / "toy.pt"), log_path=str(tmp_path / "toy.jsonl"))
    with pytest.raises(ValueError, match="no full batch"):  # as it was: 64 examples, batch 256
        fit(LinearRegression(), toy_data(64), config)
    with caplog.at_level("WARNING", logger="training.loop"):
        summary = fit(LinearRegression(), toy_data(200), replace(config, min_steps_per_epoch=10))
    assert summary["step"] == 2 * 10  # batches of 20: ten steps an epoch
    assert load_checkpoint(tmp_path / "toy.pt")["loop_config"]["batch_size"] == 20  # what ran is what is recorded
    assert "only 200 training examples" in caplog.text and "only 20 optimiser steps" in caplog.text
    tiny = fit(LinearRegression(), toy_data(64), replace(config, min_steps_per_epoch=10))
    assert tiny["step"] == 2 * 4  # never below 16 a batch: 64 examples give 4 steps


def test_options_that_cannot_work_are_refused_before_any_step():
    for options, message in (({"epochs": 0}, "--epochs must be at least 1"), ({"lr": 0.0}, "--lr must be positive"),
                             ({"min_steps_per_epoch": -1}, "--min-steps-per-epoch cannot be negative")):
        with pytest.raises(ValueError, match=message):
            LoopConfig(**options)
