"""Router registry: a name maps to a `Router` class; `build_router` is a lookup plus keyword arguments.

Adding a router is one module under `smoe/routing/` with one `@register_router("name")` class (and its `Options`
dataclass); the package imports every module in `smoe/routing/` so nothing else changes.
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Mapping

from smoe.registry import Registry
from smoe.routing.base import Router

ROUTERS: Registry[type[Router]] = Registry("router", name_attr="router_name")
register_router = ROUTERS.register  # class decorator: `@register_router("xmoe")`


def available_routers(pattern: str = "*") -> list[str]:
    """Registered router names, sorted; `pattern` is a shell-style wildcard ("s*")."""
    return ROUTERS.names(pattern)


def router_class(name: str) -> type[Router]:
    return ROUTERS.get(name)


def router_options(name: str) -> dict[str, object]:
    """The options a router accepts (beyond d_model and num_experts) with their defaults: its `Options` fields."""
    return {f.name: f.default for f in dataclasses.fields(router_class(name).Options)}


def check_router_options(name: str, options: Mapping[str, object]) -> None:
    """ValueError for an unknown router `name` (listing the routers) or options it does not take (listing its)."""
    unknown = sorted(set(options) - set(router_options(name)))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for router {name!r}; valid: {', '.join(router_options(name))}")


def build_router(name: str, d_model: int, num_experts: int, **options) -> Router:
    """Build router `name`; unknown names or options raise ValueError listing the valid ones."""
    return router_class(name)(d_model=d_model, num_experts=num_experts, **options)


def router_summary(name: str) -> str:
    """First line of the router's docstring (its paper), for `smoe routers` and `--help`."""
    return ROUTERS.summary(name)


def parse_router_spec(spec: str) -> tuple[str, dict]:
    """"ssr:p=1.0:cost=probs" -> ("ssr", {"p": 1.0, "cost": "probs"}); values are Python literals or strings."""
    name, *pairs = spec.split(":")
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"router spec {spec!r}: expected name:option=value, got {pair!r}")
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key] = value
    return name, options
