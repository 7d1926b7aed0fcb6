"""The FastAPI app factory: `create_app(settings)` wires settings, registry, routers and errors.

The lifespan loads every model's current bundle and every index once at start-up, starts the
micro-batchers, and stops and releases them at shut-down; requests reach the registry through
`serving.dependencies.get_registry`.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI

from serving.errors import install_error_handlers
from serving.metrics import install_metrics
from serving.registry import Registry
from serving.routers import embed, health, search, text, words, zero_shot
from serving.settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        registry = Registry.load(settings, metrics=app.state.metrics)
        await registry.start()  # the micro-batchers' worker tasks, on this event loop
        app.state.registry = registry
        try:
            yield
        finally:
            app.state.registry = None
            await registry.stop()
            registry.close()

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
    app.include_router(embed.router)
    app.include_router(text.router)
    app.include_router(zero_shot.router)
    app.include_router(search.router)
    return app
