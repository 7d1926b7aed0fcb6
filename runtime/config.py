"""How encoders run, in one small frozen config: the server builds it from its settings, the CLI
and jobs from their options; nothing below reads the environment."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# How many threads one onnxruntime call uses by default: 0, onnxruntime's choice, one per physical
# core. The server overlaps two batches per model (Settings.batches_in_flight), which share the
# session's threads, and its event loop takes a core back whenever the model calls leave one idle
# (bench/text_vs_infinity.py compares this with 1 thread and one batch at a time).
SERVING_INTRA_OP_THREADS = 0
PRECISION_SETTINGS = ("auto", "fp32", "fp16", "int8")  # what `precision` may say
# auto runs a bundle's int8 variant on CPU only when export measured its top-1 this close to fp32's.
INT8_MAX_TOP1_DROP_PCT = 1.0


@dataclass(frozen=True)
class RuntimeConfig:
    execution_providers: str = "auto"  # onnxruntime providers, comma-separated, or auto (TensorRT, CUDA, CPU as available)
    intra_op_threads: int = SERVING_INTRA_OP_THREADS  # onnxruntime threads per call; 0: one per physical core
    triton_url: str | None = None  # host:port of a Triton server; when set, encoders run there
    triton_timeout_s: float = 60.0  # connection and network timeout of each Triton call
    cache_dir: Path | None = None  # where TensorRT engines are kept between runs (outside the read-only bundles)
    precision: str = "auto"  # auto|fp32|fp16|int8: which variant of each model runs (runtime.encoders.factory.choose_precision)
    int8_max_top1_drop_pct: float = INT8_MAX_TOP1_DROP_PCT  # auto takes int8 only within this many top-1 points of fp32

    def __post_init__(self) -> None:
        if self.precision not in PRECISION_SETTINGS:
            raise ValueError(f"precision {self.precision!r} is not one of {PRECISION_SETTINGS}")
