"""One place that decides which runtime serves a bundle: a remote Triton server when
`triton_url` is set, else onnxruntime in this process. Callers get an `Encoder` either way."""

from __future__ import annotations

from runtime.bundle import DEFAULT_ROLES, Bundle, BundleError
from runtime.config import RuntimeConfig
from runtime.encoders.base import Encoder


def load_encoder(bundle: Bundle, config: RuntimeConfig = RuntimeConfig(), role: str | None = None) -> Encoder:
    """The encoder for `bundle`'s model (`role`, default by kind), on the runtime `config` chooses."""
    manifest = bundle.manifest
    role = role or DEFAULT_ROLES.get(manifest.kind)
    if role is None:
        raise BundleError(f"model {manifest.name} is a {manifest.kind} bundle: it holds no encoder")
    if config.triton_url:
        from runtime.encoders.triton import TritonEncoder  # lazy: tritonclient is an optional extra

        return TritonEncoder(bundle, role, config.triton_url, config.triton_timeout_s)
    from runtime.encoders.onnx_runtime import OnnxEncoder

    # TensorRT engines are cached outside the bundle, which stays byte-for-byte what export wrote
    trt_cache_dir = config.cache_dir / "tensorrt" / manifest.name / manifest.version if config.cache_dir else None
    return OnnxEncoder(bundle, role, config.execution_providers, trt_cache_dir=trt_cache_dir,
                       intra_op_threads=config.intra_op_threads)
