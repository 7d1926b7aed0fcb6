import numpy as np
import torch

from training.models.text_transformer import TextTransformer, TextTransformerConfig

CONFIG = TextTransformerConfig(vocab_size=50, context_length=8, width=32, layers=2, heads=4)


def test_maps_ids_and_mask_to_one_vector_per_text():
    torch.manual_seed(0)
    model = TextTransformer(CONFIG).eval()
    ids = torch.randint(4, 50, (3, 8))
    assert model(ids, torch.ones(3, 8, dtype=torch.long)).shape == (3, 32)


def test_padding_does_not_change_the_output():
    """What serving pads to the context length must embed like the unpadded text."""
    torch.manual_seed(0)
    model = TextTransformer(CONFIG).eval()
    ids = torch.tensor([[2, 9, 10, 3]])
    padded = torch.tensor([[2, 9, 10, 3, 0, 0, 0, 0]])
    mask = (padded != 0).long()
    with torch.no_grad():
        torch.testing.assert_close(model(ids, torch.ones_like(ids)), model(padded, mask), atol=1e-5, rtol=1e-5)
        # other pad ids behind the mask do not matter either
        torch.testing.assert_close(model(padded, mask), model(padded.masked_fill(mask == 0, 7), mask), atol=1e-5, rtol=1e-5)


def test_exports_to_onnx_with_a_dynamic_batch(tmp_path):
    import onnxruntime as ort

    torch.manual_seed(0)
    model = TextTransformer(CONFIG).eval()
    ids, mask = torch.randint(4, 50, (2, 8)), torch.ones(2, 8, dtype=torch.long)
    path = tmp_path / "text.onnx"
    torch.onnx.export(model, (ids, mask), str(path), dynamo=False, input_names=["ids", "attention_mask"],
                      output_names=["embeddings"],
                      dynamic_axes={"ids": {0: "batch"}, "attention_mask": {0: "batch"}, "embeddings": {0: "batch"}})
    ids5, mask5 = torch.randint(4, 50, (5, 8)), torch.ones(5, 8, dtype=torch.long)
    mask5[1, 4:] = 0
    got = ort.InferenceSession(str(path)).run(None, {"ids": ids5.numpy(), "attention_mask": mask5.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, model(ids5, mask5).numpy(), atol=1e-5)
