from dataclasses import replace

import torch
from PIL import Image
from torch import nn

from training.evaluation.knn_monitor import KnnMonitor
from training.methods.simclr import SimCLR, SimCLRConfig


def test_the_monitor_scores_an_encoder_on_held_out_labelled_images_and_leaves_its_mode():
    config = SimCLRConfig(data="digits", image_size=28, width=4, proj_hidden_dim=16, proj_dim=8)
    monitor = KnnMonitor(config, references=600, queries=200)
    pixels = nn.Sequential(nn.Flatten())  # raw pixels: kNN on digits is easy
    pixels.register_parameter("unused", nn.Parameter(torch.zeros(1)))  # the monitor finds the device from a parameter
    pixels.train()
    score = monitor(pixels)["knn_top1_pct"]
    assert 85.0 < score <= 100.0 and pixels.training
    noise = nn.Linear(28 * 28, 4)
    torch.nn.init.zeros_(noise.weight)  # every image the same embedding: no better than a guess
    assert monitor(nn.Sequential(nn.Flatten(), noise))["knn_top1_pct"] < 40.0


def test_the_vision_methods_evaluate_their_encoder_and_unlabelled_data_gives_no_score(tmp_path):
    method = SimCLR(SimCLRConfig(data="digits", width=4, proj_hidden_dim=16, proj_dim=8))
    assert 0.0 <= method.evaluate()["knn_top1_pct"] <= 100.0
    for n in range(4):
        Image.new("RGB", (20, 20), (n * 60, 0, 0)).save(tmp_path / f"{n}.png")  # a flat folder: no classes
    folder = SimCLR(SimCLRConfig(data=str(tmp_path), width=4, proj_hidden_dim=16, proj_dim=8))
    assert folder.evaluate() == {}


def test_a_folder_with_class_subfolders_is_scored_on_its_held_out_images(colour_folder):
    config = SimCLRConfig(data=str(colour_folder), held_out_fraction=0.3, width=4, proj_hidden_dim=16, proj_dim=8)
    monitor = KnnMonitor(config)
    mean_colour = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())  # each class is its own colour
    mean_colour.register_parameter("unused", nn.Parameter(torch.zeros(1)))
    assert monitor(mean_colour)["knn_top1_pct"] > 90.0
    queries, labels, names = monitor.held_out()
    assert names == ["blue bars", "green squares", "red circles"] and set(labels.tolist()) <= {0, 1, 2}
    assert 5 <= len(queries) <= 30 and queries.shape[1] == 3  # about 30% of 60, in colour
    no_held_out = KnnMonitor(replace(config, held_out_fraction=0.0))
    assert no_held_out(mean_colour) == {}
