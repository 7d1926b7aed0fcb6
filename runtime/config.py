"""How encoders run, in one small frozen config: the server builds it from its settings, the CLI
and jobs from their options; nothing below reads the environment."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# How many threads one onnxruntime call uses by default: the calling thread alone. A server already
# runs model calls in a worker thread, off the event loop; a single intra-op thread keeps one core
# busy with the model and leaves the rest to HTTP parsing, decoding and the other sessions.
SERVING_INTRA_OP_THREADS = 1


@dataclass(frozen=True)
class RuntimeConfig:
    execution_providers: str = "auto"  # onnxruntime providers, comma-separated, or auto (TensorRT, CUDA, CPU as available)
    intra_op_threads: int = SERVING_INTRA_OP_THREADS  # onnxruntime threads per call; 0: one per physical core
    triton_url: str | None = None  # host:port of a Triton server; when set, encoders run there
    triton_timeout_s: float = 60.0  # connection and network timeout of each Triton call
    cache_dir: Path | None = None  # where TensorRT engines are kept between runs (outside the read-only bundles)
