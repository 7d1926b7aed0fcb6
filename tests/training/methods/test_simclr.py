import math

import torch

from training.checkpoint import load_checkpoint
from training.methods.encoders import load_image_encoder
from training.methods.simclr import SimCLR, SimCLRConfig


def test_quick_profile_is_small():
    quick = SimCLRConfig.quick()
    assert quick.width < SimCLRConfig().width and quick.max_steps_per_epoch and quick.subset
    assert SimCLRConfig.quick(epochs=1).epochs == 1


def test_training_step_returns_a_finite_loss_and_gradients():
    method = SimCLR(SimCLRConfig.quick(width=4, proj_hidden_dim=16, proj_dim=8))
    views = torch.randn(4, 1, 28, 28), torch.randn(4, 1, 28, 28)
    loss, metrics = method.training_step((views, torch.zeros(4)))
    loss.backward()
    assert math.isfinite(loss.item()) and -1 <= metrics["positive_cos"] <= 1
    assert method.model["encoder"].conv1.weight.grad is not None


def test_smoke_train_on_digits_leaves_a_loadable_encoder(simclr_run):
    config, summary = simclr_run
    assert summary["step"] == 2 and math.isfinite(summary["loss"])
    checkpoint = load_checkpoint(summary["checkpoint_path"])
    assert checkpoint["method"] == "simclr" and checkpoint["epoch"] == 1
    encoder, info = load_image_encoder(summary["checkpoint_path"])
    assert not encoder.training
    assert info.method == "simclr" and info.dim == 32 and info.config["width"] == 4
    assert info.preprocessing.mode == "L" and info.preprocessing.crop == 28
    with torch.no_grad():
        embeddings = encoder(torch.randn(3, 1, 28, 28))
    assert embeddings.shape == (3, 32)
    # the encoder's weights are the trained ones, not a fresh initialisation
    trained = {k[len("encoder."):]: v for k, v in checkpoint["model"].items() if k.startswith("encoder.")}
    torch.testing.assert_close(encoder.state_dict()["conv1.weight"], trained["conv1.weight"])
