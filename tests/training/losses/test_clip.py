import math

import torch

from training.losses.clip import ClipLoss


def test_logit_scale_starts_at_one_over_0_07_and_is_capped():
    loss = ClipLoss()
    assert math.isclose(loss.logit_scale().item(), 1 / 0.07, rel_tol=1e-6)
    with torch.no_grad():
        loss.log_logit_scale.fill_(math.log(1000.0))
    assert loss.logit_scale().item() == 100.0


def test_matches_a_hand_computed_2x2_case():
    # unit vectors: image 0 = text 0 = e1; image 1 = e2, text 1 = (e1 + e2)/sqrt(2)
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    texts = torch.tensor([[1.0, 0.0], [1.0, 1.0]]) / torch.tensor([[1.0], [math.sqrt(2)]])
    loss = ClipLoss(init_temperature=1.0)  # scale 1: logits are the cosines
    c = 1 / math.sqrt(2)
    # cosine matrix (images by rows): [[1, c], [0, c]]
    image_to_text = (-math.log(math.e / (math.e + math.exp(c))) - math.log(math.exp(c) / (1 + math.exp(c)))) / 2
    text_to_image = (-math.log(math.e / (math.e + 1)) - math.log(math.exp(c) / (math.exp(c) + math.exp(c)))) / 2
    assert math.isclose(loss(images, texts).item(), (image_to_text + text_to_image) / 2, rel_tol=1e-6)


def test_unnormalised_inputs_are_normalised_and_the_scale_learns():
    torch.manual_seed(0)
    images, texts = torch.randn(4, 8), torch.randn(4, 8)
    loss = ClipLoss()
    value = loss(3 * images, 0.5 * texts)
    assert torch.allclose(value, loss(images, texts))
    value.backward()
    assert loss.log_logit_scale.grad is not None and loss.log_logit_scale.grad != 0
