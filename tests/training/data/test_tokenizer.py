import numpy as np
import pytest

from runtime.tokens import context_length, encode_batch, load_tokenizer
from training.data.tokenizer import SPECIAL_TOKENS, set_context_length, train_bpe_tokenizer

CAPTIONS = ["a photo of a sneaker", "a black and white photo of a bag", "a drawing of an ankle boot"] * 5


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(CAPTIONS, vocab_size=120, context_length=10)


def test_specials_come_first_with_pad_zero(tokenizer):
    assert [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3]


def test_encode_batch_pads_and_truncates_to_the_context_length(tokenizer):
    ids, mask = encode_batch(tokenizer, ["A Photo of a Sneaker", "a photo " * 20])
    assert ids.shape == mask.shape == (2, 10) and ids.dtype == mask.dtype == np.int64
    assert ids[0, 0] == 2 and ids[0, mask[0].sum() - 1] == 3  # [BOS] ... [EOS]
    assert (ids[0][mask[0] == 0] == 0).all()  # padding is [PAD] = 0 and masked out
    assert mask[1].all() and ids[1, -1] == 3  # truncated, still ending in [EOS]
    assert context_length(tokenizer) == 10


def test_round_trip_through_tokenizer_json(tokenizer, tmp_path):
    """Serving loads tokenizer.json and must get the very ids training used, and decode back."""
    path = tmp_path / "tokenizer.json"
    tokenizer.save(str(path))
    texts = ["a photo of a bag", "A DRAWING of an ankle boot"]
    for loaded in (load_tokenizer(path), load_tokenizer(tokenizer.to_str())):
        ids, mask = encode_batch(loaded, texts)
        np.testing.assert_array_equal(ids, encode_batch(tokenizer, texts)[0])
        assert [loaded.decode(row.tolist()) for row in ids] == [t.lower() for t in texts]


def test_encode_batch_refuses_a_tokenizer_without_fixed_length(tokenizer):
    from tokenizers import Tokenizer

    loose = Tokenizer.from_str(tokenizer.to_str())
    loose.no_padding()
    with pytest.raises(ValueError, match="set_context_length"):
        encode_batch(loose, ["a bag"])
    assert context_length(set_context_length(loose, 6)) == 6
