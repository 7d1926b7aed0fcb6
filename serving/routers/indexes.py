"""The indexes being served (`GET /indexes`) and reloading what changed on disk (`POST /admin/reload`)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends

from serving.dependencies import get_registry
from serving.registry import Registry, retire_later

router = APIRouter(tags=["indexes"])


@router.get("/indexes", summary="Each index served: its version, model and model version, count and kind")
async def list_indexes(registry: Annotated[Registry, Depends(get_registry)]) -> dict[str, Any]:
    return {"indexes": [
        {"name": name, "version": index.manifest.version, "model": index.model, "model_version": index.model_version,
         "count": len(index), "dim": index.dim, "kind": index.kind, "created_at": index.manifest.created_at}
        for name, index in sorted(list(registry.indexes.items()))
    ]}


@router.post("/admin/reload", summary="Serve the model and index versions whose `current` pointers changed")
async def reload(registry: Annotated[Registry, Depends(get_registry)]) -> dict[str, Any]:
    changed, unused = await asyncio.to_thread(registry.reload)
    retire_later(unused)  # their sessions close once the requests that hold them are done
    return {"changed": changed, "retired": [f"{b.encoder.name} {b.encoder.manifest.version}" for b in unused]}
