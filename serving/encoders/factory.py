"""One place that decides which runtime serves a bundle: a remote Triton server when
`triton_url` is set, else onnxruntime in this process. Callers get an `Encoder` either way."""

from __future__ import annotations

from pathlib import Path

from export.bundle import Bundle
from serving.encoders.base import Encoder
from serving.settings import Settings

# The file role each single-model kind serves; an image-text-encoder holds two, so its caller names one.
DEFAULT_ROLES = {"image-encoder": "image_encoder", "text-encoder": "text_encoder"}


def default_role(bundle: Bundle) -> str:
    kind = bundle.manifest.kind
    if kind not in DEFAULT_ROLES:
        raise ValueError(f"a {kind} bundle holds several models ({sorted(bundle.manifest.files)}); name the role to load")
    return DEFAULT_ROLES[kind]


def load_encoder(bundle: Bundle, settings: Settings, role: str | None = None) -> Encoder:
    """The encoder for `bundle`'s model (`role`, default by kind), on the runtime the settings choose."""
    role = role or default_role(bundle)
    if settings.triton_url:
        from serving.encoders.triton import TritonEncoder  # lazy: tritonclient is an optional extra

        return TritonEncoder(bundle, role, settings.triton_url)
    from serving.encoders.onnx_runtime import OnnxEncoder

    manifest = bundle.manifest
    # TensorRT engines are cached outside the bundle, which stays byte-for-byte what export wrote
    trt_cache_dir = Path(settings.artifacts_dir) / "cache" / "tensorrt" / manifest.name / manifest.version
    return OnnxEncoder(bundle, role, settings.execution_providers, trt_cache_dir=trt_cache_dir,
                       intra_op_threads=settings.onnx_intra_op_threads)
