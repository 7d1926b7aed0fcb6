"""Dependencies shared by the routers: the registry and the settings, handed in with `Depends`."""

from __future__ import annotations

from fastapi import Request

from serving.errors import NotReady
from serving.registry import Registry


def get_registry(request: Request) -> Registry:
    registry = getattr(request.app.state, "registry", None)
    if registry is None:
        raise NotReady("the server is still loading its models; retry in a moment")
    return registry
