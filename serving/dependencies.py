"""Dependencies shared by the routers: the registry and the settings, handed in with `Depends`."""

from __future__ import annotations

from fastapi import Request

from serving.errors import NotReady
from serving.registry import Registry


async def get_registry(request: Request) -> Registry:
    # async although it never awaits: FastAPI runs a plain `def` dependency in its threadpool,
    # a thread hop per request for one attribute lookup
    registry = getattr(request.app.state, "registry", None)
    if registry is None:
        raise NotReady("the server is still loading its models; retry in a moment")
    return registry
