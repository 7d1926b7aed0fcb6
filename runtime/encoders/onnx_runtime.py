"""The in-process runtime: an onnxruntime session over a bundle's ONNX file.

Runs on CPU, CUDA or TensorRT, whichever execution providers the setting names and this
onnxruntime build has. `InferenceSession.run` is safe to call from several threads at once,
so one encoder serves every request thread and the micro-batcher alike.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort

from runtime.bundle import Bundle
from runtime.config import SERVING_INTRA_OP_THREADS
from runtime.encoders.base import Encoder, split_inputs
from runtime.tokens import row_lengths, used_length

log = logging.getLogger(__name__)

# Short names accepted in the `execution_providers` setting, besides onnxruntime's full names.
PROVIDER_ALIASES = {
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
# The order "auto" prefers: fastest first; CPU always last so every node has somewhere to run.
AUTO_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
CPU = "CPUExecutionProvider"

# ONNX tensor types the encoders take, as onnxruntime spells them.
_NUMPY_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64, "tensor(int32)": np.int32}


def resolve_providers(setting: str, available: list[str] | None = None) -> list[str]:
    """The execution providers to ask for, in priority order, from the setting string.

    "auto" takes TensorRT and CUDA when this onnxruntime build has them; otherwise the setting is a
    comma-separated list of names or aliases (tensorrt, cuda, cpu). CPU is always appended last.
    """
    available = list(ort.get_available_providers() if available is None else available)
    if setting.strip().lower() == "auto":
        wanted = [p for p in AUTO_PREFERENCE if p in available]
    else:
        wanted = [PROVIDER_ALIASES.get(p.strip().lower(), p.strip()) for p in setting.split(",") if p.strip()]
        missing = [p for p in wanted if p not in available]
        if missing:
            raise ValueError(
                f"execution provider(s) {missing} are not in this onnxruntime build (it has {available}); "
                "set EMBEDSERVE_EXECUTION_PROVIDERS=auto, or install onnxruntime-gpu for CUDA/TensorRT"
            )
    wanted = [p for p in dict.fromkeys(wanted) if p != CPU]  # de-duplicated, CPU moved to the end
    return [*wanted, CPU]




def session_options(intra_op_threads: int = SERVING_INTRA_OP_THREADS) -> ort.SessionOptions:
    """The onnxruntime options every serving session uses; the one place they are chosen.

    - graph optimisation: all levels (constant folding, fusions, layout changes);
    - `intra_op_threads` threads per call (0: onnxruntime's default, one per physical core);
    - no spin-waiting: onnxruntime's pool threads otherwise busy-wait after each run in case
      another comes, burning a core each that the HTTP side needs between model calls;
    - sequential execution (onnxruntime's default), so inter-op threads are never started.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = intra_op_threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


class OnnxEncoder(Encoder):
    """A bundle's ONNX model (the file that plays `role`) in an onnxruntime session.

    `role` is the manifest's file role, e.g. "image_encoder" (runtime.encoders.factory picks it
    from the bundle's kind); `file_role` the file that runs it, the fp32 model by default or one of
    its variants (e.g. "image_encoder_int8"), whose `precision` the encoder reports. `providers` is
    the setting string, or a list already resolved. `trt_cache_dir`, when given, keeps TensorRT
    engines between restarts (building one takes minutes) outside the bundle, which stays read-only
    so its hashes hold. `intra_op_threads` is the threads per model call (see `session_options`).

    `one_at_a_time` runs each item of a batch alone, on its own tokens. It is for the int8 copies
    exported before 2026-12 (onnxruntime's dynamic quantiser, PrecisionVariant.one_at_a_time):
    they scale each activation tensor by its range over the batch at run time, so in a batch one
    item's scale would come from its neighbours (a short text beside a long one moved to cosine
    0.988 of itself alone). Alone, an item's vector never depends on what it was batched with.
    Items being independent then, the `intra_op_threads` budget runs that many items at once, one
    thread each, rather than splitting one item's small matrices between threads. Copies exported
    since scale each row by its own range and run batched like fp32.
    """

    def __init__(self, bundle: Bundle, role: str, providers: str | Sequence[str] = "auto", trt_cache_dir: Path | None = None,
                 intra_op_threads: int = SERVING_INTRA_OP_THREADS, file_role: str | None = None, precision: str = "fp32",
                 one_at_a_time: bool = False):
        self.manifest = bundle.manifest
        self.role = role
        self.precision = precision
        self.one_at_a_time = one_at_a_time
        parallel_items = (intra_op_threads or os.cpu_count() or 1) if one_at_a_time else 1
        self._items = ThreadPoolExecutor(parallel_items, thread_name_prefix="onnx-item") if parallel_items > 1 else None
        if self._items is not None:
            intra_op_threads = 1  # the threads go to items side by side instead
        self.path = path = bundle.file(file_role or role)  # the fp32 model's file, or its variant's
        provider_names = resolve_providers(providers) if isinstance(providers, str) else list(providers)
        provider_options = [_options_for(p, trt_cache_dir, precision) for p in provider_names]
        self.session = ort.InferenceSession(str(path), sess_options=session_options(intra_op_threads),
                                            providers=provider_names, provider_options=provider_options)
        io = self.manifest.onnx_io(role)
        self.input_names, self.output_name = list(io.inputs), io.output
        self.input_name = self.input_names[0]
        by_name = {i.name: i for i in self.session.get_inputs()}
        missing = [n for n in self.input_names if n not in by_name]
        if missing:
            raise ValueError(f"{path} has no input {missing[0]!r}; its inputs are {list(by_name)}: re-export the bundle")
        model_input = by_name[self.input_name]
        self.input_dtype = _NUMPY_DTYPES.get(model_input.type, np.float32)
        self.input_shape = model_input.shape  # e.g. ["batch", 3, 32, 32]: strings are dynamic axes
        # A text model exported with a dynamic sequence axis (export.sentence_transformers) runs on the
        # columns a batch uses, not on the whole padded context: a short text costs a short text's time.
        self.mask_index = self.input_names.index("attention_mask") if "attention_mask" in self.input_names else None
        self.trims_padding = self.mask_index is not None and len(self.input_shape) > 1 and not isinstance(self.input_shape[1], int)
        log.info("model %s %s: %s (%s) on %s", self.manifest.name, self.manifest.version, path.name, precision,
                 self.session.get_providers())

    @property
    def providers(self) -> list[str]:
        """The providers the session really uses (onnxruntime drops those it could not start)."""
        return self.session.get_providers()

    def encode(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=self.input_dtype)  # (B, C, H, W), or (B, k, T) for k inputs
        arrays = split_inputs(batch, self.input_names, self.manifest.name)
        self._check_shape(arrays[0].shape)
        if not self.one_at_a_time or len(arrays[0]) <= 1:
            return self._run(arrays)

        def one(i: int) -> np.ndarray:
            return self._run([a[i : i + 1] for a in arrays])  # (1, D)

        rows = range(len(arrays[0]))
        return np.concatenate(list(self._items.map(one, rows)) if self._items is not None else [one(i) for i in rows])  # (B, D)

    def row_tokens(self, batch: np.ndarray) -> np.ndarray | None:
        """A text model's tokens per row: its own (1 + its last attended column) where the model runs
        on the columns a batch uses, else the whole fixed context; None for an image model."""
        if self.mask_index is None:
            return None
        mask = np.asarray(batch)[:, self.mask_index]  # (B, T)
        return row_lengths(mask) if self.trims_padding else np.full(len(mask), mask.shape[1])  # (B,)

    def _run(self, arrays: list[np.ndarray]) -> np.ndarray:
        if self.trims_padding:
            length = used_length(arrays[self.mask_index])  # the longest text's tokens: (B, T) -> (B, length)
            arrays = [np.ascontiguousarray(a[:, :length]) for a in arrays]
        (embeddings,) = self.session.run([self.output_name], dict(zip(self.input_names, arrays)))  # (B, D)
        return np.asarray(embeddings, dtype=np.float32)

    def _check_shape(self, shape: tuple[int, ...]) -> None:
        # onnxruntime's own message for a wrong shape names graph nodes; say what the caller sent instead
        expected = self.input_shape
        fixed_match = len(shape) == len(expected) and all(not isinstance(e, int) or e == s for e, s in zip(expected, shape))
        if not fixed_match:
            raise ValueError(f"model {self.manifest.name} takes input shape {expected}, got {tuple(shape)}")

    def close(self) -> None:
        if self._items is not None:
            self._items.shutdown(wait=False)
        self.session = None  # onnxruntime frees the session (and GPU memory) when it is collected


def _options_for(provider: str, trt_cache_dir: Path | None, precision: str = "fp32") -> dict[str, str]:
    """TensorRT's options: its engine cache (when a folder is given) and, for fp16, half-precision
    kernels in the engine it builds; the other providers take their defaults."""
    if provider != "TensorrtExecutionProvider":
        return {}
    options = {"trt_fp16_enable": "True"} if precision == "fp16" else {}
    if trt_cache_dir is not None:
        try:
            trt_cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # a read-only or foreign-owned artifacts folder: the model still runs, uncached
            log.warning("TensorRT engines are not cached, so each start builds them again: %s", e)
            return options
        options |= {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(trt_cache_dir),
                    "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(trt_cache_dir)}
    return options
