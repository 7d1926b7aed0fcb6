"""Torch module to ONNX with a dynamic batch axis, and the parity check that proves the ONNX
file computes what the module does (cosine per row, through onnxruntime on CPU).

Uses torch's TorchScript-based exporter (`dynamo=False`): the torch.export-based one needs
`onnxscript`, which is not a dependency, and the legacy path handles our backbones and
`dynamic_axes` reliably. Hugging Face models are exported with their attention written out
(`_written_out_attention`), which onnxruntime runs faster than the export of torch's fused kernel.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from runtime.files import atomic_path
from runtime.vectors import rowwise_cosine

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17
DEFAULT_MIN_COSINE = 0.9999  # fp32 ONNX vs torch differ only by kernel rounding: far above this
FP16_MIN_COSINE = 0.99  # half precision loses ~3 decimal digits per value


class ParityError(ValueError):
    """The ONNX model's outputs are not the torch module's: the export is wrong; do not ship it."""


Inputs = torch.Tensor | tuple[torch.Tensor, ...]  # one model input, or several in the model's argument order


def _as_tuple(inputs: Inputs) -> tuple[torch.Tensor, ...]:
    return (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)


def _as_names(names: str | Sequence[str]) -> list[str]:
    return [names] if isinstance(names, str) else list(names)


def export_onnx(module: torch.nn.Module, example_input: Inputs, path: Path | str,
                input_name: str | Sequence[str] = "images", output_name: str = "embeddings",
                opset: int = DEFAULT_OPSET, more_dynamic_axes: dict[str, dict[int, str]] | None = None) -> Path:
    """Export `module` (put in eval mode) to `path`, batch axis 0 dynamic on every input and the output.

    `example_input` is one tensor named `input_name`, or a tuple of tensors (the module's positional
    arguments, e.g. token ids and attention mask) named by the sequence `input_name`, in order.
    The file is written to a temporary name beside `path`, checked with onnx.checker and renamed,
    so `path` is either absent or a complete model. `more_dynamic_axes` names further dynamic
    axes per input, beyond the batch, e.g. {"ids": {1: "sequence"}} for a text model that takes
    any number of tokens.
    """
    path = Path(path)
    examples, names = _as_tuple(example_input), _as_names(input_name)
    if len(examples) != len(names):
        raise ValueError(f"{len(examples)} example inputs but {len(names)} input names {names}; give one name per input")
    module = module.eval()
    with atomic_path(path) as tmp, torch.no_grad(), warnings.catch_warnings(), _written_out_attention(module):
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter's notices that it is legacy
        # ... its caution that advanced indexing by negative indices exports wrongly (Hugging Face's
        # attention masks index by positions >= 0), and the tracer's that the mask code's check for
        # a mask shorter than the sequence is fixed at export (ours never is): check_parity proves
        # each export either way, at other batch sizes and lengths than the trace's
        warnings.filterwarnings("ignore", "Exporting aten::index operator", UserWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module="transformers.masking_utils")
        torch.onnx.export(
            module, examples, str(tmp), dynamo=False, opset_version=opset,
            input_names=names, output_names=[output_name],
            dynamic_axes={**{name: {0: "batch", **(more_dynamic_axes or {}).get(name, {})} for name in names},
                          output_name: {0: "batch"}},
        )
        onnx.checker.check_model(str(tmp))
    shapes = ", ".join(f"{n} {tuple(x.shape)}" for n, x in zip(names, examples))
    log.info("exported %s (opset %d, inputs %s)", path, opset, shapes)
    return path


@contextmanager
def _written_out_attention(module: torch.nn.Module) -> Iterator[None]:
    """For the export, every Hugging Face model inside `module` computes attention as written out
    (softmax(QK^T + mask) V, `attn_implementation="eager"`) instead of through torch's
    scaled_dot_product_attention. The same arithmetic, but the TorchScript export of the fused
    kernel guards every softmax with IsNaN and Where over the (B, heads, T, T) scores, about a tenth
    of MiniLM's onnxruntime time on 128-token texts. The module is left as it was."""
    models = [m for m in module.modules() if hasattr(m, "set_attn_implementation")
              and getattr(getattr(m, "config", None), "_attn_implementation", "eager") != "eager"]
    before = [m.config._attn_implementation for m in models]
    for m in models:
        m.set_attn_implementation("eager")
    try:
        yield
    finally:
        for m, implementation in zip(models, before):
            m.set_attn_implementation(implementation)


def onnx_input_names(onnx_path: Path | str) -> list[str]:
    """Every input name of an ONNX file, in order (weights listed as inputs by older opsets left out)."""
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    return [i.name for i in graph.input if i.name not in initializers]


def run_onnx(onnx_path: Path | str, inputs: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """The ONNX model's first output for `inputs` (one array, or one per model input in order),
    on onnxruntime's CPU provider."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    arrays = [inputs] if isinstance(inputs, np.ndarray) else list(inputs)
    names = [i.name for i in session.get_inputs()]
    if len(arrays) != len(names):
        raise ValueError(f"{onnx_path} takes {len(names)} inputs {names}, got {len(arrays)}")
    return session.run(None, dict(zip(names, arrays)))[0]


def check_parity(module: torch.nn.Module, onnx_path: Path | str, inputs: Inputs,
                 min_cosine: float = DEFAULT_MIN_COSINE) -> float:
    """Run `inputs` (B, ...), or a tuple of them for a module of several inputs, through the torch
    module and the ONNX file; return the lowest per-row cosine between their outputs, or raise
    ParityError when it is below `min_cosine`."""
    arguments = _as_tuple(inputs)
    with torch.no_grad():
        expected = module.eval()(*arguments).float().cpu().numpy()  # (B, D)
    got = run_onnx(onnx_path, [x.cpu().numpy() for x in arguments])  # (B, D)
    if got.shape != expected.shape:
        raise ParityError(f"{onnx_path} returns shape {got.shape}, the torch module {expected.shape}")
    worst = float(rowwise_cosine(expected, got).min())
    if not worst >= min_cosine:  # `not >=` so that NaN fails too
        raise ParityError(
            f"{onnx_path} disagrees with the torch module: lowest row cosine {worst:.6f} < {min_cosine}; "
            "look for ops that export differently (dropout left on, data-dependent shapes)"
        )
    return worst


def write_fp16_copy(onnx_path: Path | str, fp16_path: Path | str) -> Path | None:
    """A half-precision copy of an fp32 ONNX file, inputs and outputs kept float32 so callers need
    not change; None when onnxruntime's converter is not installed. For GPUs: CPUs run fp16 slower."""
    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError:
        log.info("onnxruntime.transformers is not installed; no fp16 copy of %s", onnx_path)
        return None
    fp16_path = Path(fp16_path)
    model = convert_float_to_float16(onnx.load(str(onnx_path)), keep_io_types=True)
    with atomic_path(fp16_path) as tmp:
        onnx.save(model, str(tmp))
    return fp16_path
