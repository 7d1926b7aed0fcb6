"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from serving.errors import PROBE_ERRORS, error_responses, without_server_folders
from serving.responses import ReadyResponse
from serving.security import holds_key

router = APIRouter(tags=["health"], responses=error_responses(common=PROBE_ERRORS))


@router.get("/healthz", summary="The process is up")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _encoders(registry, name: str, version: str) -> list:
    key = (name, version)
    batchers = [registry.image_batchers.get(key), getattr(registry.text_models.get(key), "batcher", None)]
    return [b.encoder for b in batchers if b is not None]


def model_precisions(registry, name: str, version: str) -> dict[str, str]:
    """The precision (fp32, fp16, int8) each encoder of a loaded model version runs, by its role."""
    return {e.role: getattr(e, "precision", "fp32") for e in _encoders(registry, name, version)}


def model_runtimes(registry, name: str, version: str) -> dict[str, str]:
    """Where each encoder of a loaded model version runs, by its role: the onnxruntime provider its
    session really has (CPUExecutionProvider where a listed CUDA could not start), or "triton"."""
    return {e.role: e.providers[0] if e.providers else "triton" for e in _encoders(registry, name, version)}


@router.get("/readyz", summary="Models are loaded and requests can be served", response_model=ReadyResponse,
            responses={503: {"model": ReadyResponse, "description": "not ready: models still loading, or some failed"}})
def readyz(request: Request) -> JSONResponse:
    registry = getattr(request.app.state, "registry", None)
    settings = request.app.state.settings
    if registry is None or not registry.ready:
        failed = [{"name": n, "state": "failed", "error": without_server_folders(e, settings)}
                  for n, e in sorted(registry.failed.items())] if registry else []
        counts = {"models_loaded": 0, "models_failed": len(failed), "indexes": 0}
        return JSONResponse(status_code=503, content={"status": "not ready", "counts": counts,
                                                      **({"models": failed} if holds_key(request) else {})})
    models = [
        {"name": m.name, "version": m.version, "kind": m.kind, "method": m.method, "dim": m.dim, "state": "loaded",
         **({"precision": p} if (p := model_precisions(registry, m.name, m.version)) else {}),
         **({"runs_on": r} if (r := model_runtimes(registry, m.name, m.version)) else {})}
        for m in sorted(list(registry.manifests.values()), key=lambda m: m.name)
    ] + [{"name": n, "state": "failed", "error": without_server_folders(e, settings)} for n, e in sorted(registry.failed.items())]
    indexes = [{"name": name, "version": index.manifest.version, "model": index.model, "model_version": index.model_version}
               for name, index in sorted(list(registry.indexes.items()))]
    ready = not registry.failed or registry.settings.ready_with_failures
    counts = {"models_loaded": len(models) - len(registry.failed), "models_failed": len(registry.failed),
              "indexes": len(indexes)}
    details = {"models": models, "indexes": indexes} if holds_key(request) else {}
    return JSONResponse(status_code=200 if ready else 503,
                        content={"status": "ready" if ready else "not ready", "counts": counts, **details})


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "the text format"}})
def metrics(request: Request) -> Response:
    registry = getattr(request.app.state, "registry", None)
    if registry is not None:
        request.app.state.metrics.set_precisions(
            {(m.name, m.version): model_precisions(registry, m.name, m.version) for m in list(registry.manifests.values())})
    return request.app.state.metrics.render()
