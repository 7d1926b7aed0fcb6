"""A local sentence-transformers folder to a text-encoder bundle: `embedserve import
sentence-transformers <folder> --name <name>`.

The folder's transformer, its Pooling module and its optional Normalize module become one ONNX
graph, (ids, attention_mask) -> (batch, dim), with the same input contract as a CLIP text tower
(runtime.tokens, runtime.bundle.OnnxIO), so /embed/text and /v1/embeddings serve it like any text
model. Its sequence axis is dynamic: the server runs a batch on the tokens its longest text uses
(runtime.encoders.onnx_runtime), not on the whole context. The folder's tokenizer.json goes into
the bundle with fixed-length truncation and padding at the model's max_seq_length. Before
anything is written, the ONNX model is checked against the torch sentence-transformers model
itself (`SentenceTransformer.encode`, its own tokenizer and pooling) on varied sentences; the
lowest cosine is recorded in the manifest, and below DEFAULT_MIN_COSINE nothing is written.
Like an exported tower, the bundle gets an int8 copy for CPUs (dynamic, per channel) and, when
asked, an fp16 copy for GPUs, each scored by its cosine to fp32 on the parity sentences and on
class prompts (export.quantize), which `EMBEDSERVE_PRECISION=auto` reads to choose.
"""

from __future__ import annotations

import logging
from importlib import metadata
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from tokenizers import Tokenizer, normalizers

from export.folders import FolderError, read_json
from export.onnx import DEFAULT_MIN_COSINE, DEFAULT_OPSET, ParityError, export_onnx, run_onnx
from export.quantize import check_fp16_agreement, text_encoder_variants
from runtime.bundle import Bundle, Manifest, OnnxIO, TokenizerSpec, sha256_file, write_bundle
from runtime.fashion_mnist import FASHION_MNIST_CLASSES
from runtime.templates import EVAL_TEMPLATES
from runtime.tokens import encode_batch, used_length
from runtime.vectors import rowwise_cosine
from training.data.tokenizer import set_context_length

log = logging.getLogger(__name__)

ONNX_FILE = "text_encoder.onnx"
TOKENIZER_FILE = "tokenizer.json"
WEIGHTS_FILE = "model.safetensors"
INPUTS = ("ids", "attention_mask")  # (batch, sequence) int64 each, from runtime.tokens.encode_batch
OUTPUT_NAME = "embeddings"  # (batch, dim) float32; unit rows when the folder has a Normalize module
ONNX_IO = {"text_encoder": OnnxIO(INPUTS, OUTPUT_NAME)}
MODULES = ("Transformer", "Pooling", "Normalize")  # the sentence-transformers modules this importer reads
# Pooling modes this importer puts in the graph, in the order sentence-transformers concatenates them.
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens")
# The boolean keys of a Pooling config.json (sentence-transformers < 6), by mode.
POOLING_FLAGS = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max", "pooling_mode_mean_tokens": "mean",
                 "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                 "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}
# Sentences for the parity check: a word, questions, numbers, code, several scripts and emoji,
# odd spacing, and texts of 40 and over 150 tokens (past the 128 that MiniLM's tokenizer.json
# truncates at by itself), so padding, truncation settings and pooling over many tokens are all tried.
PARITY_TEXTS = (
    "hello",
    "A man is playing a guitar on the street.",
    "How do I reset my password if I no longer have access to my e-mail?",
    "The quarterly revenue rose 12.5% to $4.2 billion, beating estimates of $3.9 billion.",
    "def add(a, b):\n    return a + b  # adds two numbers",
    "Ein Kleid für den Sommer, leicht und luftig.",
    "Le chat dort sur le canapé pendant que la pluie tombe.",
    "东京是日本的首都。",
    "I love this movie!!! 😍🍿",
    "   leading and trailing   spaces,\tand a tab   ",
    "Photosynthesis converts light energy into chemical energy stored in glucose, releasing oxygen as a "
    "by-product; it happens in the chloroplasts of plant cells and some bacteria.",
    " ".join(["The committee reviewed the proposal in detail, weighing its costs against the expected benefits "
              "for the community, and asked for revisions before the final vote next month."] * 5),
)


@dataclass(frozen=True)
class SentenceTransformerFolder:
    """What a sentence-transformers folder declares, read from its JSON files without torch."""

    path: Path  # the folder, with modules.json
    transformer_path: Path  # the Transformer module's folder: config.json, model.safetensors, tokenizer.json
    pooling: tuple[str, ...]  # pooling modes, concatenated in this order (POOLING_MODES)
    normalize: bool  # True if a Normalize module ends the pipeline
    max_seq_length: int  # tokens the model reads per text, special tokens included
    do_lower_case: bool  # sentence-transformers lower-cases texts before its tokenizer sees them
    modules: tuple[str, ...]  # the module types in order, e.g. ("Transformer", "Pooling", "Normalize")


def _pooling_modes(config: dict[str, Any], path: Path) -> tuple[str, ...]:
    mode = config.get("pooling_mode")
    if mode is not None:  # sentence-transformers ≥ 6 names the mode; older folders set one flag per mode
        modes = {mode} if isinstance(mode, str) else set(mode)
    else:
        modes = {name for key, name in POOLING_FLAGS.items() if config.get(key)}
    unsupported = sorted(modes - set(POOLING_MODES))
    if unsupported or not modes:
        raise FolderError(f"{path}: pooling {sorted(modes) or 'none'} is not supported; this importer pools "
                          f"with {', '.join(POOLING_MODES)}")
    return tuple(m for m in POOLING_MODES if m in modes)


def read_folder(folder: Path | str) -> SentenceTransformerFolder:
    """The declaration of the sentence-transformers model in `folder`, or FolderError saying
    what is missing: modules.json, a Transformer module with config.json, model.safetensors and
    tokenizer.json, and a Pooling module; a Normalize module is optional."""
    path = Path(folder)
    if not path.is_dir():
        raise FolderError(f"{path} is not a folder; give the folder of a sentence-transformers model (with modules.json)")
    entries = read_json(path / "modules.json", "a sentence-transformers folder lists its modules there")
    if not isinstance(entries, list) or not all(isinstance(e, dict) and "type" in e for e in entries):
        raise FolderError(f"{path / 'modules.json'} is not a list of modules with a 'type' each")
    types = tuple(str(e["type"]).rsplit(".", 1)[-1] for e in entries)
    unknown = [t for t in types if t not in MODULES]
    if unknown or types[:2] != ("Transformer", "Pooling") or types[2:] not in ((), ("Normalize",)):
        raise FolderError(f"{path}: modules {list(types)} are not supported; this importer reads Transformer, "
                          "Pooling and an optional Normalize, in that order")
    transformer = path / entries[0].get("path", "")
    for name, what in (("config.json", "the transformer's configuration"), (WEIGHTS_FILE, "the weights (safetensors only)"),
                       (TOKENIZER_FILE, "the tokenizer, in the `tokenizers` format")):
        if not (transformer / name).is_file():
            raise FolderError(f"{transformer / name} is missing: {what}")
    config = read_json(transformer / "config.json", "the transformer's configuration")
    pooling_path = path / entries[1].get("path", "") / "config.json"
    pooling = _pooling_modes(read_json(pooling_path, "the Pooling module's configuration"), pooling_path)
    st_config_path = transformer / "sentence_bert_config.json"
    st_config = read_json(st_config_path, "") if st_config_path.is_file() else {}
    max_seq_length = st_config.get("max_seq_length") or config.get("max_position_embeddings")
    if not isinstance(max_seq_length, int) or max_seq_length < 2:
        raise FolderError(f"{path}: no max_seq_length in sentence_bert_config.json nor max_position_embeddings in config.json")
    return SentenceTransformerFolder(path=path, transformer_path=transformer, pooling=pooling, normalize="Normalize" in types,
                                     max_seq_length=max_seq_length, do_lower_case=bool(st_config.get("do_lower_case")),
                                     modules=types)


class SentenceEncoder(nn.Module):
    """(ids int64 (B, T), attention_mask (B, T)) -> (B, dim): the transformer's token states, pooled
    the way the folder's Pooling module says, L2-normalised when it has a Normalize module."""

    def __init__(self, transformer: nn.Module, pooling: tuple[str, ...], normalize: bool):
        super().__init__()
        self.transformer = transformer
        self.pooling = pooling
        self.normalize = normalize

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states = self.transformer(input_ids=ids, attention_mask=attention_mask).last_hidden_state  # (B, T, H)
        keep = attention_mask.to(states.dtype)[:, :, None]  # (B, T, 1)
        parts = []
        for mode in self.pooling:
            if mode == "cls":
                parts.append(states[:, 0])  # (B, H)
            elif mode == "max":
                parts.append(states.masked_fill(keep == 0, -1e9).max(dim=1).values)  # (B, H), as sentence-transformers masks
            else:
                total, count = (states * keep).sum(1), keep.sum(1).clamp(min=1e-9)  # (B, H), (B, 1)
                parts.append(total / count if mode == "mean" else total / count.sqrt())
        pooled = torch.cat(parts, dim=-1)  # (B, dim)
        return F.normalize(pooled, dim=-1) if self.normalize else pooled


def load_reference(spec: SentenceTransformerFolder) -> Any:
    """The torch sentence-transformers model in the folder, on CPU, never reaching for the Hub."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights are local; a missing file must fail, not download
    from sentence_transformers import SentenceTransformer  # lazy: heavy, and only this importer needs it

    try:
        return SentenceTransformer(str(spec.path), device="cpu", local_files_only=True).eval()
    except Exception as e:  # noqa: BLE001 - a damaged file fails in many ways; each is this folder's fault
        raise FolderError(f"sentence-transformers cannot load {spec.path} ({type(e).__name__}: {e}); "
                          "restore the folder from the model's source") from e


def bundle_tokenizer(spec: SentenceTransformerFolder, context_length: int) -> Tokenizer:
    """The folder's tokenizer.json, truncating and padding to exactly `context_length` tokens, and
    lower-casing first when sentence-transformers does (do_lower_case) so that ids match."""
    tokenizer = Tokenizer.from_file(str(spec.transformer_path / TOKENIZER_FILE))
    if spec.do_lower_case:
        steps = [normalizers.Lowercase()] + ([tokenizer.normalizer] if tokenizer.normalizer is not None else [])
        tokenizer.normalizer = normalizers.Sequence(steps)
    pad_token = (tokenizer.padding or {}).get("pad_token") or _pad_token(spec.transformer_path)
    return set_context_length(tokenizer, context_length, pad_token)


def _pad_token(folder: Path) -> str:
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        if (folder / name).is_file():
            token = read_json(folder / name, "").get("pad_token")
            if token:
                return token["content"] if isinstance(token, dict) else str(token)
    raise FolderError(f"{folder}: the tokenizer names no pad token (tokenizer.json padding, special_tokens_map.json)")


def parity(reference: Any, onnx_path: Path, tokenizer: Tokenizer, texts: tuple[str, ...] | list[str],
           min_cosine: float = DEFAULT_MIN_COSINE) -> float:
    """The lowest cosine between `reference.encode` (sentence-transformers: its tokenizer, its pooling)
    and the ONNX model on our tokenizer's ids, over `texts` run three ways: all at the full padded
    context, all on the columns they use (as the server runs them), and the first alone. Raises
    ParityError below `min_cosine`."""
    expected = reference.encode(list(texts), batch_size=len(texts), convert_to_numpy=True, show_progress_bar=False)  # (N, D)
    ids, mask = encode_batch(tokenizer, texts)  # (N, T) int64 each, T = the context length
    length, first = used_length(mask), used_length(mask[:1])
    runs = [run_onnx(onnx_path, [ids, mask]),  # (N, D)
            run_onnx(onnx_path, [ids[:, :length], mask[:, :length]]),  # (N, D)
            run_onnx(onnx_path, [ids[:1, :first], mask[:1, :first]])]  # (1, D)
    if runs[0].shape != expected.shape:
        raise ParityError(f"{onnx_path} returns shape {runs[0].shape}, sentence-transformers {expected.shape}")
    worst = min(float(rowwise_cosine(expected[: len(got)], got).min()) for got in runs)
    if not worst >= min_cosine:  # `not >=` so that NaN fails too
        raise ParityError(f"the ONNX model disagrees with sentence-transformers: lowest cosine {worst:.6f} < {min_cosine}; "
                          "its tokenizer or pooling differs from what the folder declares")
    return worst


def import_sentence_transformer(
    folder: Path | str,
    artifacts_dir: Path | str,
    name: str,
    version: str | None = None,
    texts: tuple[str, ...] | list[str] = PARITY_TEXTS,
    min_cosine: float = DEFAULT_MIN_COSINE,
    int8: bool = True,
    fp16: bool = False,
) -> Bundle:
    """Import the sentence-transformers model in `folder` as the text-encoder bundle
    `artifacts_dir/models/<name>/<version>` (next vN by default), with an int8 and/or fp16 copy
    as asked, and make it current. Raises
    FolderError for a folder it cannot read, and export.onnx.ParityError, writing nothing, when
    the ONNX model's embeddings of `texts` are not sentence-transformers' own."""
    spec = read_folder(folder)
    reference = load_reference(spec)
    context_length = int(reference.max_seq_length or spec.max_seq_length)
    tokenizer = bundle_tokenizer(spec, context_length)
    module = SentenceEncoder(reference[0].auto_model, spec.pooling, spec.normalize).eval()
    ids, mask = (torch.from_numpy(a) for a in encode_batch(tokenizer, texts[:2]))  # (2, T) int64 each
    length = used_length(mask.numpy())
    sequence = {input_name: {1: "sequence"} for input_name in INPUTS}
    dimension = getattr(reference, "get_embedding_dimension", None) or reference.get_sentence_embedding_dimension
    dim = int(dimension())  # the name changed in sentence-transformers 6

    with tempfile.TemporaryDirectory(prefix="embedserve-import-") as scratch:
        # Exported and checked outside artifacts/, so a failed parity check leaves no trace there.
        work = Path(scratch)
        with warnings.catch_warnings():
            # transformers' mask helpers warn that tracing fixes their checks; the parity check below
            # runs other batch sizes and lengths than the trace's, so a fixed check would show there
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message="Exporting aten::index operator")  # indices here are never negative
            onnx_path = export_onnx(module, (ids[:, :length], mask[:, :length]), work / ONNX_FILE, INPUTS, OUTPUT_NAME,
                                    more_dynamic_axes=sequence)
        worst = parity(reference, onnx_path, tokenizer, texts, min_cosine)
        log.info("imported %s: lowest cosine to sentence-transformers %.7f over %d texts", spec.path, worst, len(texts))
        tokenizer.save(str(work / TOKENIZER_FILE))
        # the copies are scored on the parity sentences and on short prompts, the two kinds of text served
        scored = list(texts) + [t.format(c.lower()) for c in FASHION_MNIST_CLASSES for t in EVAL_TEMPLATES]
        scored_ids, scored_mask = encode_batch(tokenizer, scored)  # (N, T) int64 each
        used = used_length(scored_mask)
        precisions = [p for p, wanted in (("int8", int8), ("fp16", fp16)) if wanted]
        written = text_encoder_variants(onnx_path, "text_encoder", precisions, (scored_ids[:, :used], scored_mask[:, :used]),
                                        lambda batch: encode_batch(tokenizer, batch), zero_shot=None)
        check_fp16_agreement(written)
        transformer_config = read_json(spec.transformer_path / "config.json", "")
        manifest = Manifest(
            name=name,
            kind="text-encoder",
            method="sentence-transformers",
            dim=dim,
            normalized=spec.normalize,
            files={"text_encoder": ONNX_FILE, "tokenizer": TOKENIZER_FILE,
                   **{w.variant.file_role: w.file for w in written}},
            tokenizer=TokenizerSpec(file=TOKENIZER_FILE, context_length=context_length),
            onnx=ONNX_IO,
            training_config={"source": "sentence-transformers", "folder": str(spec.path.resolve()),
                             "modules": list(spec.modules), "pooling": list(spec.pooling), "normalize": spec.normalize,
                             "max_seq_length": context_length, "do_lower_case": spec.do_lower_case,
                             "architectures": transformer_config.get("architectures", []),
                             "model_type": transformer_config.get("model_type")},
            extra={"opset": DEFAULT_OPSET, "parity_min_cosine": {"text_encoder": worst}, "parity_texts": len(texts),
                   "parity_reference": f"sentence-transformers {metadata.version('sentence-transformers')}, torch "
                                       f"{torch.__version__}, CPU", "sequence_axis": "dynamic"},
            source_checkpoint_sha256=sha256_file(spec.transformer_path / WEIGHTS_FILE),
            variants=tuple(w.variant for w in written),
        )

        def write_files(target: Path) -> None:
            for file in manifest.files.values():
                shutil.copyfile(work / file, target / file)

        return write_bundle(Path(artifacts_dir), manifest, write_files, version)
