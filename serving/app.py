"""The FastAPI app factory: `create_app(settings)` wires settings, registry, routers and errors.

The lifespan loads every model's current bundle and every index once at start-up, starts the
micro-batchers and the job runner (which resumes unfinished jobs), follows reloads that other
workers were asked for (and, with an interval, polls for new `current` versions), and stops and
releases them at shut-down; requests reach the registry through `serving.dependencies.get_registry`.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from serving.docs import describe_limits, install_docs
from serving.errors import install_error_handlers
from serving.job_worker import JobRunner
from serving.lifetime import RequestLifetimeMiddleware
from serving.limits import Inflight, RequestLimitsMiddleware
from serving.metrics import install_metrics
from serving.registry import Registry, retire_later
from serving.routers import embed, explain, health, indexes, jobs, openai_compat, playground, search, text, words, zero_shot
from serving.security import AccessMiddleware, check_exposure
from serving.server import freeze_startup_objects, release_memory_promptly, thaw_startup_objects
from serving.settings import Settings, get_settings

log = logging.getLogger(__name__)


RELOAD_CHECK_S = 1.0  # how often a worker looks whether another one answered POST /admin/reload


async def _follow_new_versions(registry: Registry, interval_s: float) -> None:
    """Reload when another worker of this artifacts folder was asked to (Registry.reload_requested)
    and, when `interval_s` > 0, that often in any case."""
    loop = asyncio.get_running_loop()
    step = min(interval_s, RELOAD_CHECK_S) if interval_s > 0 else RELOAD_CHECK_S
    last = loop.time()
    while True:
        await asyncio.sleep(step)
        if not (registry.reload_requested() or (interval_s > 0 and loop.time() - last >= interval_s)):
            continue
        last = loop.time()
        try:
            changed, unused = await asyncio.to_thread(registry.reload)
        except Exception:  # a bad folder must not stop the polling
            log.exception("reload failed")
            continue
        if changed:
            log.info("reloaded: %s", ", ".join(changed))
        retire_later(unused)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    check_exposure(settings)  # no open server on a network unless asked for

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        release_memory_promptly()  # before the models load and the worker threads start
        registry = Registry.load(settings, metrics=app.state.metrics)
        await registry.start()  # the micro-batchers' worker tasks, on this event loop
        app.state.registry = registry
        try:
            runner = JobRunner(settings, lambda: app.state.registry)
            await runner.start()
        except (OSError, sqlite3.Error) as e:  # e.g. artifacts mounted read-only: everything but jobs serves
            log.warning("jobs are off: the artifacts folder cannot hold their state (%s)", e)
            runner = None
        app.state.jobs = runner
        poller = asyncio.create_task(_follow_new_versions(registry, settings.reload_interval_s), name="reloads")
        freeze_startup_objects()
        try:
            yield
        finally:
            poller.cancel()
            app.state.jobs = None
            if runner is not None:
                await runner.stop(settings.shutdown_timeout_s)
            app.state.registry = None
            await registry.stop()
            registry.close()
            thaw_startup_objects()

    app = FastAPI(
        title="embedserve",
        summary="Embeddings, zero-shot labels, nearest neighbours and word analogies.",
        description=describe_limits(settings),
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc come from serving.docs, with their files served locally
        redoc_url=None,
    )
    install_docs(app)
    app.state.settings = settings
    app.state.registry = None
    app.state.jobs = None
    install_error_handlers(app)
    inflight = Inflight(settings.max_inflight_requests, settings.max_inflight_bytes)
    app.add_middleware(RequestLimitsMiddleware, max_bytes=settings.max_request_bytes, inflight=inflight)
    app.add_middleware(AccessMiddleware, settings=settings)  # inside the metrics: refusals are counted too
    app.add_middleware(RequestLifetimeMiddleware, request_timeout_s=settings.request_timeout_s,
                       body_timeout_s=settings.body_timeout_s)  # disconnects and deadlines, counted too
    origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
    if origins:  # outside the key check: a browser's preflight carries no key, and a 401 needs CORS headers to be read
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["authorization", "content-type"])
    metrics = install_metrics(app)
    metrics.inflight_requests.set_function(lambda: inflight.requests)
    metrics.inflight_bytes.set_function(lambda: inflight.bytes)
    # FastAPI tries each included router in turn, at some tens of microseconds each, so the routes
    # that carry the traffic come first: a one-sentence /v1/embeddings answered 0.7 ms sooner (of
    # 4.3) than as the tenth of eleven routers.
    app.include_router(openai_compat.router)
    app.include_router(embed.router)
    app.include_router(text.router)
    app.include_router(search.router)
    app.include_router(zero_shot.router)
    app.include_router(explain.router)
    app.include_router(words.router)
    app.include_router(health.router)
    app.include_router(indexes.router)
    app.include_router(jobs.router)
    app.include_router(playground.router)
    return app
