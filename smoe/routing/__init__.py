"""Routers: every method of the papers behind one interface, `Router.forward(x, ctx) -> Routing`."""

import importlib
import pkgutil

from smoe.routing.base import Router, Routing, RoutingContext
from smoe.routing.registry import (
    available_routers,
    build_router,
    register_router,
    router_class,
    router_options,
    router_summary,
)

_INFRA = {"base", "registry", "losses"}
for _mod in pkgutil.iter_modules(__path__):
    if _mod.name not in _INFRA and not _mod.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = [
    "Router",
    "Routing",
    "RoutingContext",
    "available_routers",
    "build_router",
    "register_router",
    "router_class",
    "router_options",
    "router_summary",
]
