import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import export.sentence_transformers as st_import
from export.onnx import ParityError
from export.sentence_transformers import FolderError, import_sentence_transformer, read_folder
from runtime.bundle import open_bundle
from runtime.config import RuntimeConfig
from runtime.encoders.factory import load_encoder
from runtime.tokens import load_tokenizer, text_encoder_batch
from runtime.vectors import rowwise_cosine

# Sentences the import's own parity check never saw.
UNSEEN = ["A woman is slicing onions in a small kitchen.", "Où est la gare la plus proche ?",
          "The server answered every request within ten milliseconds, even under load.", "ok"]


DIM, CONTEXT = 384, 256  # all-MiniLM-L6-v2's embedding size and max_seq_length


@pytest.fixture(scope="module")
def reference(minilm_folder: Path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_folder), device="cpu", local_files_only=True)


def test_the_bundle_embeds_as_sentence_transformers_does(minilm_artifacts: Path, reference):
    bundle = open_bundle(minilm_artifacts, "minilm")
    # the server's runtime, trimming padding as it serves, on the fp32 model the parity is about
    encoder = load_encoder(bundle, RuntimeConfig(precision="fp32"), role="text_encoder")
    tokenizer = load_tokenizer(bundle.file("tokenizer"))
    got = encoder.encode(text_encoder_batch(tokenizer, UNSEEN))  # (4, 384)
    expected = reference.encode(UNSEEN, convert_to_numpy=True)  # (4, 384)
    assert rowwise_cosine(got, expected).min() >= 0.9999
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)  # the Normalize module is in the graph
    alone = encoder.encode(text_encoder_batch(tokenizer, UNSEEN[-1:]))  # a short text without a long one beside it
    assert rowwise_cosine(alone, got[-1:]).min() >= 0.9999


def test_the_manifest_records_what_serving_needs_and_the_parity(minilm_artifacts: Path):
    manifest = open_bundle(minilm_artifacts, "minilm").manifest
    assert (manifest.kind, manifest.method, manifest.dim, manifest.normalized) == ("text-encoder", "sentence-transformers",
                                                                                  DIM, True)
    assert manifest.tokenizer.context_length == CONTEXT  # sentence_bert_config's max_seq_length, not the 128 of tokenizer.json
    assert manifest.onnx_io("text_encoder").inputs == ("ids", "attention_mask")
    assert manifest.extra["parity_min_cosine"]["text_encoder"] >= 0.9999
    assert manifest.training_config["pooling"] == ["mean"] and manifest.training_config["normalize"] is True
    assert manifest.source_checkpoint_sha256 and set(manifest.files) == {"text_encoder", "tokenizer", "text_encoder_int8"}


def test_the_int8_copy_is_scored_and_auto_serves_it_on_a_cpu(minilm_artifacts: Path, reference):
    bundle = open_bundle(minilm_artifacts, "minilm")
    (variant,) = bundle.manifest.variants
    assert (variant.role, variant.precision, variant.technique) == ("text_encoder", "int8", "dynamic-rowwise")
    assert variant.top1_pct is None and 0.99 <= variant.mean_cosine < 1.0 and variant.min_cosine <= variant.mean_cosine
    assert variant.cpu_speedup > 0  # timed against fp32 at export (how fast is the benchmarks' business)
    auto = load_encoder(bundle, RuntimeConfig(precision="auto", execution_providers="CPUExecutionProvider"),
                        role="text_encoder")
    assert auto.precision == ("int8" if variant.cpu_speedup >= 1.0 else "fp32")  # where export timed it faster
    encoder = load_encoder(bundle, RuntimeConfig(precision="int8", execution_providers="CPUExecutionProvider"),
                           role="text_encoder")
    assert encoder.precision == "int8"
    tokenizer = load_tokenizer(bundle.file("tokenizer"))
    got = encoder.encode(text_encoder_batch(tokenizer, UNSEEN))  # (4, 384)
    assert rowwise_cosine(got, reference.encode(UNSEEN, convert_to_numpy=True)).min() >= 0.97  # texts it was not scored on
    # each token is scaled by its own range, so a text comes out the same batched beside longer ones
    # as alone (onnxruntime's dynamic quantiser moved one to cosine 0.988 of itself); batched it runs
    assert not encoder.one_at_a_time
    for i, text in enumerate(UNSEEN):
        np.testing.assert_allclose(encoder.encode(text_encoder_batch(tokenizer, [text]))[0], got[i], atol=1e-5)


def test_an_import_that_disagrees_with_sentence_transformers_writes_nothing(tmp_path: Path, monkeypatch, reference,
                                                                            minilm_folder: Path):
    # A tokenizer that cuts texts at 16 tokens, where sentence-transformers reads 256: the long
    # parity sentences embed differently, so the import must refuse.
    monkeypatch.setattr(st_import, "load_reference", lambda spec: reference)
    truncating = st_import.bundle_tokenizer
    monkeypatch.setattr(st_import, "bundle_tokenizer", lambda spec, context_length: truncating(spec, 16))
    with pytest.raises(ParityError, match="lowest cosine"):
        import_sentence_transformer(minilm_folder, tmp_path, "minilm")
    assert not (tmp_path / "models").exists()


def copy_declarations(source: Path, target: Path) -> Path:
    """The MiniLM folder's JSON and tokenizer files (not its weights) under `target`, with an empty weights file."""
    for path in source.rglob("*.json"):
        (target / path.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target / path.relative_to(source))
    (target / "model.safetensors").write_bytes(b"")
    return target


def test_the_folder_is_read_without_torch(tmp_path: Path, minilm_folder: Path):
    folder = copy_declarations(minilm_folder, tmp_path)
    spec = read_folder(folder)
    assert (spec.pooling, spec.normalize, spec.max_seq_length, spec.modules) == (
        ("mean",), True, CONTEXT, ("Transformer", "Pooling", "Normalize"))


@pytest.mark.parametrize("damage, message", [
    (lambda f: (f / "modules.json").unlink(), "modules.json is missing"),
    (lambda f: (f / "model.safetensors").unlink(), "model.safetensors is missing"),
    (lambda f: (f / "tokenizer.json").unlink(), "tokenizer.json is missing"),
    (lambda f: (f / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_lasttoken": True})),
     r"pooling \['lasttoken'\] is not supported"),
    (lambda f: (f / "modules.json").write_text(json.dumps(
        [*json.loads((f / "modules.json").read_text()), {"type": "sentence_transformers.models.Dense", "path": "3_Dense"}])),
     "are not supported"),
    (lambda f: (f / "modules.json").write_text("{not json"), "is not valid JSON"),
])
def test_a_broken_folder_is_refused_saying_what_is_wrong(tmp_path: Path, minilm_folder: Path, damage, message):
    folder = copy_declarations(minilm_folder, tmp_path)
    damage(folder)
    with pytest.raises(FolderError, match=message):
        read_folder(folder)
