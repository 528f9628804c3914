"""One registry for every kind of named thing: routers, layer-level methods, residual rules, tasks.

`ROUTERS = Registry("router", name_attr="router_name")`; `@ROUTERS.register("xmoe")` on a class makes it
`ROUTERS.get("xmoe")` (and sets `cls.router_name = "xmoe"`);
a second registration of a name by another object is an error naming both registrants; `names("s*")` lists by
shell wildcard; an unknown name is a ValueError that lists the valid ones.

Each name remembers where it came from: the plugin being imported when it was registered (`registering_for`, set
by `smoe.plugins` while it imports one), else None (the package itself, or code that imported it directly).
"""

from __future__ import annotations

import contextlib
import fnmatch
import inspect
import weakref
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

_LOADING: list[str] = []  # the plugins being imported, innermost last
_REGISTRIES: weakref.WeakSet[Registry] = weakref.WeakSet()


@contextlib.contextmanager
def registering_for(plugin: str) -> Iterator[None]:
    """Within the block, every registration is recorded as coming from `plugin` (its spec: a file or module)."""
    _LOADING.append(plugin)
    try:
        yield
    finally:
        _LOADING.pop()


def forget_plugin(plugin: str) -> None:
    """Remove from every registry the names `plugin` registered (it failed to import after registering some)."""
    for registry in list(_REGISTRIES):
        for name in [n for n, p in registry._plugins.items() if p == plugin]:
            del registry._items[name], registry._plugins[name]


def _registrant(obj: object, plugin: str | None) -> str:
    """Who registered obj, for errors: the plugin, else the module that defines obj."""
    where = f"plugin {plugin}" if plugin is not None else f"module {getattr(obj, '__module__', '?')}"
    return f"{getattr(obj, '__name__', repr(obj))} from {where}"


class Registry(Generic[T]):
    """Name -> object, for one kind of thing (`kind` names it in errors: "router", "task", ...)."""

    def __init__(self, kind: str, name_attr: str | None = None):
        self.kind, self.name_attr = kind, name_attr
        self._items: dict[str, T] = {}
        self._plugins: dict[str, str | None] = {}
        _REGISTRIES.add(self)

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: register the decorated object under `name`; returns it unchanged."""

        def add(obj: T) -> T:
            self.add(name, obj)
            return obj

        return add

    def add(self, name: str, obj: T) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}")
        plugin = _LOADING[-1] if _LOADING else None
        if name in self._items and self._items[name] is not obj:
            raise ValueError(f"{self.kind} {name!r} is registered twice: by "
                             f"{_registrant(self._items[name], self._plugins[name])} and by "
                             f"{_registrant(obj, plugin)}; rename one")
        if name not in self._items:
            self._plugins[name] = plugin
        self._items[name] = obj
        if self.name_attr is not None:
            setattr(obj, self.name_attr, name)

    def get(self, name: str) -> T:
        if name not in self._items:
            raise ValueError(f"unknown {self.kind} {name!r}; available {self.kind}s: {', '.join(self.names())}")
        return self._items[name]

    def plugin(self, name: str) -> str | None:
        """The plugin that registered `name` (its spec), or None when the package or ordinary code did."""
        self.get(name)  # an unknown name: the usual error
        return self._plugins[name]

    def summary(self, name: str) -> str:
        """The first line of the registered object's docstring (its paper), for listings."""
        doc = inspect.getdoc(self.get(name)) or ""
        return doc.splitlines()[0] if doc else ""

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names, sorted; `pattern` is a shell-style wildcard ("s*")."""
        return sorted(n for n in self._items if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
