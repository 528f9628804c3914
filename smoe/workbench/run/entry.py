"""A comparison entry: a router (or layer-level method) with options and config overrides, and its syntax.

Entry syntax (entries are comma-separated):  [LABEL=]NAME[:OPTION=VALUE...][+KEY=VALUE...]
  NAME            a router or a layer-level method (`smoe routers`)
  :OPTION=VALUE   a router option (of a layer-level method: its own option, else its router's), as
                  `smoe bench layer --router` (values are Python literals, else strings): `topk:k=1`
  +KEY=VALUE      a config override of this entry only, as --set (`+rule=momentum`, `+model.moe.num_experts=8`)
  LABEL=          the entry's name in tables and run folders (letters, digits, `_ . -`; at most 100
                  characters); default: the entry text
e.g. `topk`, `ssr:p=0.1`, `topk+rule=momentum`, `adam=topk+rule=adam`, `s2moe`, `sup=topk+supervised=true`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from smoe.layer import available_layers, layer_options
from smoe.routing import available_routers
from smoe.routing.registry import check_router_options, parse_router_spec

LABEL = re.compile(r"[A-Za-z0-9_.-]+")
MAX_LABEL = 100  # characters: a label names run folders (<label>-s<seed>), and a file name holds at most 255 bytes


@dataclass(frozen=True)
class Entry:
    """One comparison entry: label (1 to MAX_LABEL characters), router (or layer-level method), router options,
    config overrides."""
    label: str
    router: str
    options: dict = field(default_factory=dict)
    overrides: tuple[str, ...] = ()

    def __post_init__(self):
        if not isinstance(self.label, str) or not 0 < len(self.label) <= MAX_LABEL:
            shown = self.label[:40] + "..." if isinstance(self.label, str) and len(self.label) > 40 else self.label
            raise ValueError(f"entry label {shown!r}: labels name run folders, so 1 to at most {MAX_LABEL} characters "
                             "are accepted (set a shorter LABEL=)")

    @property
    def folder(self) -> str:
        """The run-folder stem: the label with characters other than letters, digits and `_ . = -` as `-`."""
        return re.sub(r"[^A-Za-z0-9_.=-]+", "-", self.label).strip("-") or "entry"

    def config_overrides(self) -> list:
        """Overrides for `resolve_config`: the options as (key, value) pairs (`model.moe.router_options.<option>`,
        or `model.moe.method_options.<option>` for a layer-level method's own), then the +KEY=VALUE ones."""
        own = layer_options(self.router) if self.router in available_layers() else {}
        options = [(f"model.moe.{'method_options' if k in own else 'router_options'}.{k}", v)
                   for k, v in self.options.items()]
        return [*options, *self.overrides]

    def describe(self) -> dict:
        """The options field of results.json: router options and overrides."""
        return {**self.options, **dict(o.split("=", 1) for o in self.overrides)}


def parse_entry(text: str) -> Entry:
    """"[LABEL=]NAME[:OPTION=VALUE...][+KEY=VALUE...]" -> Entry (see the module docstring)."""
    spec = text.strip()
    label, sep, rest = spec.partition("=")
    if sep and LABEL.fullmatch(label) and label not in available_routers() + available_layers():
        spec = rest
    else:
        label = spec
    head, *overrides = spec.split("+")
    name, options = parse_router_spec(head)
    names = available_routers() + available_layers()
    if name not in names:
        raise ValueError(f"entry {text!r}: unknown router {name!r}; available: {', '.join(sorted(names))}")
    if name in available_routers():
        try:
            check_router_options(name, options)
        except ValueError as e:
            raise ValueError(f"entry {text!r}: {e}") from None
    for item in overrides:
        key, eq, _ = item.partition("=")
        if not eq or not key:
            raise ValueError(f"entry {text!r}: expected +KEY=VALUE, got {'+' + item!r}")
    return Entry(label=label, router=name, options=options, overrides=tuple(overrides))


def parse_entries(text: str) -> list[Entry]:
    """Comma-separated entries; labels and run folders must be distinct."""
    entries = [parse_entry(item) for item in text.split(",") if item.strip()]
    if not entries:
        raise ValueError("routers must name at least one entry, e.g. topk,xmoe")
    for attr in ("label", "folder"):
        seen = [getattr(e, attr) for e in entries]
        dupes = sorted({x for x in seen if seen.count(x) > 1})
        if dupes:
            raise ValueError(f"entries must have distinct {attr}s, got {dupes} more than once (set LABEL=)")
    return entries
