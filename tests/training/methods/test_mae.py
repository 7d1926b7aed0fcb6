import math

import torch

from training.methods.encoders import load_image_encoder
from training.methods.mae import MAE, MAEConfig, random_masking


def test_masking_hides_the_requested_ratio_per_sample():
    keep_ids, mask, restore_ids = random_masking(5, 49, 0.75, generator=torch.Generator().manual_seed(0))
    assert keep_ids.shape == (5, 12) and mask.shape == restore_ids.shape == (5, 49)
    assert mask.sum(dim=1).tolist() == [37.0] * 5  # 49 - int(49 * 0.25) hidden in every sample
    for b in range(5):
        assert set(keep_ids[b].tolist()) == set(torch.nonzero(mask[b] == 0).flatten().tolist())
    assert not torch.equal(mask[0], mask[1])  # each sample gets its own pattern


def test_restore_ids_put_visible_tokens_back_in_patch_order():
    keep_ids, mask, restore_ids = random_masking(2, 10, 0.5, generator=torch.Generator().manual_seed(1))
    # what the decoder does: [visible tokens..., mask tokens...] then gather by restore_ids
    sequence = torch.cat([keep_ids, torch.full((2, 5), -1)], dim=1)  # visible tokens carry their patch id
    restored = torch.gather(sequence, 1, restore_ids)  # (B, N)
    positions = torch.arange(10).expand(2, 10)
    assert torch.equal(restored[mask == 0], positions[mask == 0])  # each visible patch back at its place
    assert (restored[mask == 1] == -1).all()  # mask tokens fill exactly the hidden places


def test_training_step_encodes_visible_patches_only():
    method = MAE(MAEConfig.quick(dim=32, depth=1, num_heads=2, decoder_dim=16, decoder_num_heads=2))
    seen = {}
    encoder = method.model["encoder"]
    original = encoder.forward_tokens
    encoder.forward_tokens = lambda images, keep_ids=None: seen.setdefault("tokens", original(images, keep_ids))
    loss, metrics = method.training_step((torch.randn(3, 1, 28, 28), torch.zeros(3)))
    assert seen["tokens"].shape == (3, 12, 32)  # 12 of 49 patches reach the encoder
    assert math.isfinite(loss.item()) and abs(metrics["mask_ratio"].item() - 37 / 49) < 1e-6


def test_smoke_train_on_digits_and_eval_encoder_sees_all_patches(mae_run):
    config, summary = mae_run
    assert summary["step"] == 2 and math.isfinite(summary["loss"])
    encoder, info = load_image_encoder(summary["checkpoint_path"])
    assert info.method == "mae" and info.dim == 32 and info.preprocessing.channels == 1
    images = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        embedding = encoder(images)
        assert torch.allclose(embedding, encoder.forward_tokens(images).mean(1))  # all 49 tokens, no masking
        assert encoder.forward_tokens(images).shape == (2, 49, 32)
