"""One place that decides which runtime serves a bundle, and at which precision: a remote Triton
server when `triton_url` is set, else onnxruntime in this process on the bundle's fp32, fp16 or
int8 file as `precision` says. Callers get an `Encoder` either way."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from runtime.bundle import DEFAULT_ROLES, Bundle, BundleError, Manifest, PrecisionVariant
from runtime.config import INT8_MAX_TOP1_DROP_PCT, RuntimeConfig
from runtime.encoders.base import Encoder

log = logging.getLogger(__name__)

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
# auto's bar for an int8 variant that export could not score by top-1 (no labelled data): its
# outputs' mean cosine to fp32's.
INT8_MIN_MEAN_COSINE = 0.99


@dataclass(frozen=True)
class PrecisionChoice:
    precision: str  # what runs: "fp32", "fp16" or "int8"
    file_role: str  # the bundle file that holds it
    reason: str  # why, for the log line
    one_at_a_time: bool = False  # an int8 copy exported before 2026-12: run each item alone (PrecisionVariant.one_at_a_time)


def int8_within_bound(variant: PrecisionVariant, max_top1_drop_pct: float = INT8_MAX_TOP1_DROP_PCT) -> tuple[bool, str]:
    """Whether auto may run this int8 variant: its recorded top-1 change is no worse than
    -`max_top1_drop_pct` points (or, with no top-1 recorded, its mean cosine to fp32 is at least
    INT8_MIN_MEAN_COSINE); and a sentence saying why."""
    if variant.top1_change_pct is not None:
        ok = variant.top1_change_pct >= -max_top1_drop_pct
        return ok, f"its top-1 change at export was {variant.top1_change_pct:+.2f} points (bound -{max_top1_drop_pct:g})"
    if variant.mean_cosine is not None:
        ok = variant.mean_cosine >= INT8_MIN_MEAN_COSINE
        return ok, f"no top-1 recorded; its mean cosine to fp32 was {variant.mean_cosine:.4f} (bound {INT8_MIN_MEAN_COSINE})"
    return False, "export recorded no accuracy for it"


def choose_precision(manifest: Manifest, role: str, asked: str, providers: Sequence[str],
                     max_top1_drop_pct: float = INT8_MAX_TOP1_DROP_PCT) -> PrecisionChoice:
    """The variant of `role` to run for the setting `asked` (auto|fp32|fp16|int8) on `providers`.

    auto: fp16 when a GPU provider (CUDA, TensorRT) is among them and the bundle has fp16; on CPU,
    int8 when the bundle has it, its recorded accuracy change is within bounds (int8_within_bound)
    and, where export timed it, it ran faster than fp32 (a small CNN's int8 convolutions can be
    slower: 0.7x on 2 threads here); else fp32. An explicit fp16 or int8 the bundle lacks falls back to fp32."""
    wanted = ("fp16" if any(p in GPU_PROVIDERS for p in providers) else "int8") if asked == "auto" else asked
    if wanted == "fp32":
        return PrecisionChoice("fp32", role, f"precision {asked}")
    variant = manifest.variant(role, wanted)
    if variant is None:
        return PrecisionChoice("fp32", role, f"precision {asked}: the bundle has no {wanted} variant of {role}")
    if asked == "auto" and wanted == "int8":
        ok, why = int8_within_bound(variant, max_top1_drop_pct)
        if not ok:
            return PrecisionChoice("fp32", role, f"precision auto: int8 not taken, {why}")
        if variant.cpu_speedup is not None and variant.cpu_speedup < 1.0:
            return PrecisionChoice("fp32", role, f"precision auto: int8 not taken, it ran at {variant.cpu_speedup:.2f}x "
                                                 "fp32's speed on the CPU that exported it")
        return PrecisionChoice("int8", variant.file_role, f"precision auto on CPU: {why}", variant.one_at_a_time)
    return PrecisionChoice(wanted, variant.file_role, f"precision {asked}" + (" on a GPU" if asked == "auto" else ""),
                           variant.one_at_a_time)


def planned_precision(manifest: Manifest, config: RuntimeConfig, role: str) -> str:
    """The precision `load_encoder` would run `role` of `manifest` at in this process, without
    loading it: what an index built by a job records, so a server can tell an index embedded at
    another precision than its queries (a remote Triton runs the repository's fp32 models)."""
    return "fp32" if config.triton_url else _choice_here(manifest, config, role)[1].precision


def _choice_here(manifest: Manifest, config: RuntimeConfig, role: str) -> tuple[list[str], PrecisionChoice]:
    """The onnxruntime providers this process has for `config`, and the variant of `role` to run on them."""
    from runtime.encoders.onnx_runtime import resolve_providers

    providers = resolve_providers(config.execution_providers)
    return providers, choose_precision(manifest, role, config.precision, providers, config.int8_max_top1_drop_pct)


def load_encoder(bundle: Bundle, config: RuntimeConfig = RuntimeConfig(), role: str | None = None) -> Encoder:
    """The encoder for `bundle`'s model (`role`, default by kind), on the runtime and precision `config` chooses."""
    manifest = bundle.manifest
    role = role or DEFAULT_ROLES.get(manifest.kind)
    if role is None:
        raise BundleError(f"model {manifest.name} is a {manifest.kind} bundle: it holds no encoder")
    if config.triton_url:
        from runtime.encoders.triton import TritonEncoder  # lazy: tritonclient is an optional extra

        return TritonEncoder(bundle, role, config.triton_url, config.triton_timeout_s)
    from runtime.encoders.onnx_runtime import OnnxEncoder

    providers, choice = _choice_here(manifest, config, role)
    fell_back = config.precision not in ("auto", "fp32") and choice.precision == "fp32"
    (log.warning if fell_back else log.info)("model %s %s %s runs %s: %s%s", manifest.name, manifest.version, role,
                                             choice.precision, choice.reason, "; falling back to fp32" if fell_back else "")

    def session(providers: list[str], choice: PrecisionChoice) -> OnnxEncoder:
        # TensorRT engines are cached outside the bundle, which stays byte-for-byte what export wrote;
        # one folder per precision, as an fp16 engine is another engine
        trt_cache_dir = (config.cache_dir / "tensorrt" / manifest.name / manifest.version / choice.precision
                         if config.cache_dir else None)
        return OnnxEncoder(bundle, role, providers, trt_cache_dir=trt_cache_dir, intra_op_threads=config.intra_op_threads,
                           file_role=choice.file_role, precision=choice.precision, one_at_a_time=choice.one_at_a_time)

    encoder = session(providers, choice)
    # onnxruntime lists the providers it was built with; one whose libraries do not load (a CUDA or
    # cuDNN of another major, no GPU) is dropped from the session with only a line of its own log
    missing = [p for p in providers if p not in encoder.providers]
    if missing:
        runs = encoder.providers
        actual = choose_precision(manifest, role, config.precision, runs, config.int8_max_top1_drop_pct)
        log.warning("model %s %s %s: onnxruntime lists %s but could not start %s, so it runs on %s%s", manifest.name,
                    manifest.version, role, ", ".join(providers), ", ".join(missing), runs[0],
                    f"; precision {config.precision} for it: {actual.precision} ({actual.reason})" if actual != choice else "")
        if actual != choice:
            encoder.close()
            encoder = session(runs, actual)
    return encoder
