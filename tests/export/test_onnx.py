from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from export.onnx import ParityError, check_parity, export_onnx, onnx_input_names, run_onnx, write_fp16_copy


def _small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 6),
    ).eval()


@pytest.fixture
def exported(tmp_path: Path) -> tuple[nn.Module, Path]:
    module = _small_cnn()
    path = export_onnx(module, torch.randn(2, 3, 12, 12), tmp_path / "m.onnx", "images", "embeddings")
    return module, path


def test_export_writes_named_io_and_no_temp_files(exported, tmp_path: Path):
    _, path = exported
    assert path == tmp_path / "m.onnx" and path.is_file()
    assert onnx_input_names(path) == ["images"]
    assert [o.name for o in onnx.load(str(path)).graph.output] == ["embeddings"]
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


@pytest.mark.parametrize("batch", [1, 5])
def test_parity_at_batch_sizes_other_than_the_export_batch(exported, batch: int):
    module, path = exported
    inputs = torch.randn(batch, 3, 12, 12)
    assert check_parity(module, path, inputs) >= 0.9999
    assert run_onnx(path, inputs.numpy()).shape == (batch, 6)


def test_batch_axis_is_dynamic_in_the_graph(exported):
    _, path = exported
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    input_shape, output_shape = session.get_inputs()[0].shape, session.get_outputs()[0].shape
    assert isinstance(input_shape[0], str) and input_shape[1:] == [3, 12, 12]
    assert isinstance(output_shape[0], str) and output_shape[1:] == [6]


def test_parity_fails_for_a_different_model(exported):
    _, path = exported
    other = _small_cnn()
    with torch.no_grad():
        other[-1].weight.mul_(-1.0)  # flip the output: cosine -1
    with pytest.raises(ParityError, match="disagrees"):
        check_parity(other, path, torch.randn(4, 3, 12, 12))


def test_fp16_copy_keeps_float32_io_and_stays_close(exported, tmp_path: Path):
    module, path = exported
    fp16 = write_fp16_copy(path, tmp_path / "m.fp16.onnx")
    if fp16 is None:
        pytest.skip("onnxruntime.transformers is not installed")
    session = ort.InferenceSession(str(fp16), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(float)"
    assert check_parity(module, fp16, torch.randn(3, 3, 12, 12), min_cosine=0.99) >= 0.99


class _TwoInputs(nn.Module):
    """(ids int64 (B, T), mask int64 (B, T)) -> (B, 4): an embedding masked-mean, like a text tower."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embedding = nn.Embedding(10, 4)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        keep = mask.float()[:, :, None]  # (B, T, 1)
        return (self.embedding(ids) * keep).sum(1) / keep.sum(1).clamp(min=1.0)  # (B, 4)


def test_several_inputs_export_with_their_names_and_a_dynamic_batch_each(tmp_path: Path):
    module = _TwoInputs().eval()
    ids, mask = torch.randint(0, 10, (5, 6)), (torch.rand(5, 6) > 0.3).long()
    path = export_onnx(module, (ids[:2], mask[:2]), tmp_path / "t.onnx", ["ids", "attention_mask"], "embeddings")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["ids", "attention_mask"]
    assert all(isinstance(i.shape[0], str) for i in session.get_inputs())
    assert check_parity(module, path, (ids, mask)) >= 0.9999
    assert run_onnx(path, [ids.numpy(), mask.numpy()]).shape == (5, 4)


def test_one_name_per_input_is_required(tmp_path: Path):
    with pytest.raises(ValueError, match="one name per input"):
        export_onnx(_TwoInputs(), (torch.zeros(1, 3, dtype=torch.long),) * 2, tmp_path / "t.onnx", "ids")


class _TinyBert(nn.Module):
    """A Hugging Face BERT (random weights, two small layers) mean-pooled: a text tower as MiniLM is one."""

    def __init__(self):
        super().__init__()
        from transformers import BertConfig, BertModel

        torch.manual_seed(0)
        config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                            max_position_embeddings=16)
        self.bert = BertModel(config, add_pooling_layer=False).eval()

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states = self.bert(input_ids=ids, attention_mask=attention_mask).last_hidden_state  # (B, T, 16)
        keep = attention_mask[:, :, None].float()
        return (states * keep).sum(1) / keep.sum(1)  # (B, 16)


def test_a_hugging_face_model_exports_its_attention_written_out(tmp_path: Path):
    import onnx

    module = _TinyBert()
    module.bert.set_attn_implementation("sdpa")
    ids, mask = torch.randint(0, 50, (4, 7)), torch.ones(4, 7, dtype=torch.long)
    mask[1, 3:] = 0  # padding, which the attention must mask
    path = export_onnx(module, (ids[:2], mask[:2]), tmp_path / "bert.onnx", ["ids", "attention_mask"],
                       more_dynamic_axes={"ids": {1: "sequence"}, "attention_mask": {1: "sequence"}})
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "Softmax" in ops and "IsNaN" not in ops  # the fused kernel's export guards every softmax with IsNaN
    assert check_parity(module, path, (ids, mask)) >= 0.9999
    assert module.bert.config._attn_implementation == "sdpa"  # the module is left as it was
