"""`MoEConfig`: the one config of an MoE layer, nested and typed.

The layer (`smoe.MoE`, or a layer-level method such as `smoe.S2MoE`), the models' configs (their field `moe`) and
a run's config.yaml hold it, so a hyperparameter is declared once:

    MoEConfig(num_experts=8, d_model=64, hidden=128, router="topk", router_options=TopKOptions(k=2),
              capacity_factor=1.25, num_shared_experts=1)

`router_options` is the router's own `Options` dataclass (`smoe.routing`), the one place where `k` and every other
router option is declared and defaulted; `method` and `method_options` put a layer-level method (its own typed
`Options`) around the routed layer. `to_dict()` / `from_dict()` round-trip through YAML and JSON, the options as
nested mappings keyed by field. `MoEConfig.from_keywords(d_model, num_experts, hidden, k=2, ...)` builds the same
config from flat keywords (what `MoE(d_model, num_experts, hidden, ...)` takes).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from smoe._validate import check_bool, check_choice, check_float, check_int
from smoe.experts import BACKENDS, EXPERT_KINDS, check_expert_sizes
from smoe.registry import Registry
from smoe.routing import available_routers, router_class
from smoe.routing.base import RouterOptions

LAYERS: Registry[type[nn.Module]] = Registry("layer-level method", name_attr="layer_name")
# `@register_layer(name)` on a method that changes the whole layer, not only the routing (S2MoE): a drop-in for
# `MoE` with an `Options` dataclass (a `MethodOptions`), built from a MoEConfig whose `method` is its name
# (forward(x, mask, **context) -> MoEOutput, with `router`, `dispatcher`, `experts`, `after_step`).
register_layer = LAYERS.register


@dataclass
class MethodOptions:
    """The options of a layer-level method (a subclass per method, validated in `__post_init__`)."""

    def check_config(self, config: MoEConfig) -> None:
        """The checks that need the rest of the layer's config (ValueError naming the option); none by default."""


def available_layers() -> list[str]:
    """Names of the layer-level methods (`MoEConfig.method`)."""
    return LAYERS.names()


def layer_options(name: str) -> dict[str, object]:
    """A layer-level method's own options with their defaults (its `Options` fields), for `smoe routers`."""
    return {f.name: f.default for f in dataclasses.fields(LAYERS.get(name).Options)}


def option_values(options: object) -> dict[str, Any]:
    """An options dataclass as keyword arguments: {field: value}, values as they are (not copied)."""
    return {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}


def options_of(cls: type, given: object, what: str) -> Any:
    """`given` as an instance of the options dataclass `cls`: an instance of exactly cls as it is, None as cls(),
    a mapping as cls(**mapping). An unknown key or a bad value is a ValueError that starts with `what`."""
    if type(given) is cls:
        return given
    if given is not None and not isinstance(given, Mapping):
        raise ValueError(f"{what} must be a {cls.__name__} or a mapping of its fields, got {given!r}")
    values = dict(given or {})
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise ValueError(f"{what}: unknown option(s) {unknown}; valid options: {', '.join(valid)}")
    try:
        return cls(**values)
    except ValueError as e:
        raise ValueError(f"{what}: {e}") from None


@dataclass(kw_only=True)
class MoEConfig:
    """Everything that defines an MoE layer; validated here, once.

    num_experts: E. d_model, hidden: the layer's widths (each expert an MLP d -> hidden -> d); None in a model's
    config, where the model supplies its own (`sized`). router: a registered router; router_options: its `Options`
    (None: its defaults; a mapping of its fields is converted), k among them. method: None, or a layer-level method
    around the routed layer (`smoe.available_layers()`, e.g. "s2moe"), with method_options its `Options`.
    capacity_factor: per-expert capacity C = ceil(capacity_factor * pairs / E) (`capacity_rounding` "ceil" or
    "round", rounded up to a multiple of `capacity_multiple`); None: dropless. A router that owns capacity (an
    option `capacity_factor`, e.g. expert_choice) takes it in its router_options instead, and dispatch stays
    dropless. expert: "swiglu", "gelu" or "relu"; bias: biases in the experts; backend: "auto", "grouped" or
    "loop" (`smoe.experts`). num_shared_experts: always-active experts (DeepSeekMoE), shared_gate: their
    sigmoid gate (Qwen2-MoE). check_finite: refuse NaN/Inf input (a host read per call).
    """

    num_experts: int
    d_model: int | None = None
    hidden: int | None = None
    router: str = "topk"
    router_options: RouterOptions | None = None
    method: str | None = None
    method_options: MethodOptions | None = None
    capacity_factor: float | None = None
    capacity_rounding: str = "ceil"
    capacity_multiple: int = 1
    expert: str = "swiglu"
    bias: bool = False
    backend: str = "auto"
    check_finite: bool = False
    num_shared_experts: int = 0
    shared_gate: bool = False

    def __post_init__(self):
        check_int("num_experts", self.num_experts, low=1)
        for name in ("d_model", "hidden"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), low=1)
        self._check_router()
        self._check_method()
        self._check_capacity()
        check_choice("expert", self.expert, EXPERT_KINDS)
        check_choice("backend", self.backend, BACKENDS)
        for name in ("bias", "check_finite", "shared_gate"):
            check_bool(name, getattr(self, name))
        check_int("num_shared_experts", self.num_shared_experts, low=0)
        if self.shared_gate and not self.num_shared_experts:
            raise ValueError("shared_gate=True needs num_shared_experts >= 1")
        if self.d_model is not None and self.hidden is not None:
            check_expert_sizes(self.num_experts, self.d_model, self.hidden, self.expert, self.bias)
        if self.method_options is not None:
            self.method_options.check_config(self)

    def _check_router(self) -> None:
        if self.router in LAYERS:
            raise ValueError(f"router={self.router!r} is a layer-level method, not a router: set method="
                             f"{self.router!r} (and router to the router it wraps)")
        if self.router not in available_routers():
            raise ValueError(f"unknown router {self.router!r}; available routers: {', '.join(available_routers())}; "
                             f"layer-level methods (method=...): {', '.join(LAYERS.names())}")
        what = f"router_options (router {self.router!r})"
        self.router_options = options_of(router_class(self.router).Options, self.router_options, what)
        try:
            self.router_options.check_experts(self.num_experts)
        except ValueError as e:
            raise ValueError(f"{what}: {e}") from None

    def _check_method(self) -> None:
        if self.method is None:
            if self.method_options is not None:
                raise ValueError(f"method_options must be None without a method, got {self.method_options!r}")
            return
        if self.method not in LAYERS:
            raise ValueError(f"unknown method {self.method!r}; layer-level methods: {', '.join(LAYERS.names())}")
        what = f"method_options (method {self.method!r})"
        self.method_options = options_of(LAYERS.get(self.method).Options, self.method_options, what)

    def _check_capacity(self) -> None:
        if self.capacity_factor is not None:
            check_float("capacity_factor", self.capacity_factor, low=0.0, low_open=True)
            if self.router_owns_capacity:
                raise ValueError(f"capacity_factor: router {self.router!r} owns capacity; set router_options."
                                 f"capacity_factor instead (dispatch stays dropless)")
        check_choice("capacity_rounding", self.capacity_rounding, ("ceil", "round"))
        check_int("capacity_multiple", self.capacity_multiple, low=1)

    @property
    def router_owns_capacity(self) -> bool:
        """Whether the router takes the capacity factor (an option `capacity_factor`, e.g. expert_choice)."""
        return any(f.name == "capacity_factor" for f in dataclasses.fields(self.router_options))

    def sized(self, d_model: int, hidden: int) -> MoEConfig:
        """This config with the widths of the model that holds it (d_model, hidden) filled in."""
        for name, value in (("d_model", d_model), ("hidden", hidden)):
            if getattr(self, name) not in (None, value):
                raise ValueError(f"moe.{name}={getattr(self, name)} differs from the model's {name}={value}: "
                                 f"leave it unset (None) in a model's config")
        return dataclasses.replace(self, d_model=d_model, hidden=hidden)

    def to_dict(self) -> dict:
        """Plain nested mappings (YAML / JSON): the options as {field: value}."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> MoEConfig:
        """The config `to_dict` wrote (or any mapping of the fields, the options as nested mappings)."""
        return cls.of(data, "moe")

    @classmethod
    def of(cls, value: object, what: str = "moe") -> MoEConfig:
        """`value` as a MoEConfig: one as it is, a mapping of the fields converted (ValueError naming `what`)."""
        if isinstance(value, MoEConfig):
            return value
        if not isinstance(value, Mapping):
            raise ValueError(f"{what} must be a MoEConfig or a mapping of its fields, got {value!r}")
        unknown = sorted(set(value) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"{what}: unknown key(s) {unknown}; valid keys: "
                             f"{', '.join(f.name for f in dataclasses.fields(cls))}")
        try:
            return cls(**value)
        except TypeError as e:  # a required field missing
            raise ValueError(f"{what}: {e}") from None

    @classmethod
    def from_keywords(cls, d_model: int | None, num_experts: int, hidden: int | None, **keywords) -> MoEConfig:
        """The config of `MoE(d_model, num_experts, hidden, **keywords)`: see `nest_keywords`."""
        return cls.of({"d_model": d_model, "num_experts": num_experts, "hidden": hidden, **nest_keywords(keywords)})


def nest_keywords(keywords: Mapping[str, Any]) -> dict[str, Any]:
    """Flat keywords (`router="topk", k=2, capacity_factor=1.25, noise="fixed"`) as the nested fields of a
    MoEConfig: a field of MoEConfig is that field; `router` naming a layer-level method is `method` (its router
    the default); a field of the method's Options goes to method_options; the rest (k included), and
    capacity_factor when the router owns capacity, go to router_options."""
    flat = dict(keywords)
    fields = {f.name for f in dataclasses.fields(MoEConfig)}
    for name in ("router_options", "method_options"):
        if flat.get(name) is not None and not isinstance(flat[name], Mapping):
            raise ValueError(f"{name} must be a mapping here (keywords), got {flat[name]!r}")
    nested = {"router_options": dict(flat.pop("router_options", None) or {}),
              "method_options": dict(flat.pop("method_options", None) or {})}
    if flat.get("router") in LAYERS:
        method = flat.pop("router")
        if flat.get("method", method) != method:
            raise ValueError(f"router={method!r} and method={flat['method']!r}: name the method once")
        flat["method"] = method
    router = flat.get("router", MoEConfig.__dataclass_fields__["router"].default)
    method_fields = ({f.name for f in dataclasses.fields(LAYERS.get(flat["method"]).Options)}
                     if flat.get("method") in LAYERS else set())
    owns_capacity = router in available_routers() and any(
        f.name == "capacity_factor" for f in dataclasses.fields(router_class(router).Options))
    for name, value in flat.items():
        if name in method_fields:
            nested["method_options"][name] = value
        elif name in fields and not (name == "capacity_factor" and owns_capacity and value is not None):
            nested[name] = value
        else:
            nested["router_options"][name] = value
    if not nested["method_options"]:
        nested["method_options"] = None
    return nested


# the model fields that held the MoE layer's config before it was nested (`nest_flat_moe`)
FLAT_MOE_FIELDS = ("num_experts", "k", "router", "router_options", "capacity_factor", "num_shared_experts",
                   "shared_gate", "expert")


def nest_flat_moe(model: Mapping[str, Any]) -> dict[str, Any]:
    """A model section written before the MoE layer's config was nested (flat num_experts, k, router,
    router_options, capacity_factor, ... beside the model's own fields), in today's spelling: those fields as the
    mapping `moe` (a MoEConfig's fields). A section that is already nested comes back as it is."""
    section = dict(model)
    if "moe" in section or not set(FLAT_MOE_FIELDS) & set(section):
        return section
    flat = {name: section.pop(name) for name in FLAT_MOE_FIELDS if name in section}
    options = dict(flat.pop("router_options", None) or {})
    if "base_router" in options:  # S2MoE's own option then: the router it wraps
        flat["method"], flat["router"] = flat.pop("router", "s2moe"), options.pop("base_router")
    section["moe"] = nest_keywords({**flat, **options})
    return section
