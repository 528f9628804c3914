"""One registry for every kind of named thing: routers, layer-level methods, residual rules, tasks.

`ROUTERS = Registry("router", name_attr="router_name")`; `@ROUTERS.register("xmoe")` on a class makes it
`ROUTERS.get("xmoe")` (and sets `cls.router_name = "xmoe"`);
a second registration of a name by another object is an error; `names("s*")` lists by shell wildcard; an
unknown name is a ValueError that lists the valid ones.
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> object, for one kind of thing (`kind` names it in errors: "router", "task", ...)."""

    def __init__(self, kind: str, name_attr: str | None = None):
        self.kind, self.name_attr = kind, name_attr
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: register the decorated object under `name`; returns it unchanged."""

        def add(obj: T) -> T:
            self.add(name, obj)
            return obj

        return add

    def add(self, name: str, obj: T) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}")
        if name in self._items and self._items[name] is not obj:
            raise ValueError(f"{self.kind} {name!r} is already registered ({self._items[name]!r})")
        self._items[name] = obj
        if self.name_attr is not None:
            setattr(obj, self.name_attr, name)

    def get(self, name: str) -> T:
        if name not in self._items:
            raise ValueError(f"unknown {self.kind} {name!r}; available {self.kind}s: {', '.join(self.names())}")
        return self._items[name]

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
