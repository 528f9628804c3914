"""Router registry: a name maps to a `Router` class; `build_router` is a lookup plus keyword arguments.

Adding a router is one module under `smoe/routing/` with one `@register_router("name")` class; the package
imports every module in `smoe/routing/` so nothing else changes.
"""

from __future__ import annotations

import ast
import fnmatch
import inspect
from collections.abc import Callable

from smoe.routing.base import Router

_ROUTERS: dict[str, type[Router]] = {}
_COMMON = ("d_model", "num_experts")


def register_router(name: str) -> Callable[[type[Router]], type[Router]]:
    """Class decorator: make a Router subclass buildable as `build_router(name, ...)`."""

    def wrap(cls: type[Router]) -> type[Router]:
        if name in _ROUTERS and _ROUTERS[name] is not cls:
            raise ValueError(f"router {name!r} is already registered by {_ROUTERS[name].__qualname__}")
        _ROUTERS[name] = cls
        cls.router_name = name
        return cls

    return wrap


def available_routers(pattern: str = "*") -> list[str]:
    """Registered router names, sorted; `pattern` is a shell-style wildcard ("s*")."""
    return sorted(n for n in _ROUTERS if fnmatch.fnmatch(n, pattern))


def router_class(name: str) -> type[Router]:
    if name not in _ROUTERS:
        raise ValueError(f"unknown router {name!r}; available routers: {', '.join(available_routers())}")
    return _ROUTERS[name]


def router_options(name: str) -> dict[str, object]:
    """The options a router accepts (beyond d_model and num_experts) with their defaults."""
    params = inspect.signature(router_class(name).__init__).parameters
    return {
        p.name: (None if p.default is inspect.Parameter.empty else p.default)
        for p in params.values()
        if p.name != "self" and p.name not in _COMMON and p.kind is not p.VAR_KEYWORD
    }


def build_router(name: str, d_model: int, num_experts: int, **options) -> Router:
    """Build router `name`; unknown names or options raise ValueError listing the valid ones."""
    cls = router_class(name)
    valid = router_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for router {name!r}; valid options: {', '.join(sorted(valid)) or 'none'}"
        )
    return cls(d_model=d_model, num_experts=num_experts, **options)


def router_summary(name: str) -> str:
    """First line of the router's docstring (its paper), for `smoe routers` and `--help`."""
    doc = inspect.getdoc(router_class(name)) or ""
    return doc.splitlines()[0] if doc else ""


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
