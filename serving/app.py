"""The FastAPI app factory: `create_app(settings)` wires settings, registry, routers and errors.

The lifespan loads every model's current bundle once at start-up and releases them at
shut-down; requests reach the registry through `serving.dependencies.get_registry`.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI

from serving.errors import install_error_handlers
from serving.metrics import install_metrics
from serving.registry import Registry
from serving.routers import health, words
from serving.settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.registry = Registry.load(settings)
        try:
            yield
        finally:
            app.state.registry.close()
            app.state.registry = None

    app = FastAPI(
        title="embedserve",
        summary="Embeddings, zero-shot labels, nearest neighbours and word analogies.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.registry = None
    install_error_handlers(app)
    install_metrics(app)
    app.include_router(health.router)
    app.include_router(words.router)
    return app
