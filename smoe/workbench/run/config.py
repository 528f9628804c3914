"""A run's configuration: a `RunConfig` resolved from a task preset, a router and `--set key=value` overrides.

Sections: `data` (the task's data config), `model` (the task's model config, less the fields derived from the
data) and `train` (`TrainConfig`). The model section holds the MoE layer's config as the mapping `moe` (a
`smoe.MoEConfig`: `num_experts`, `router_options` with `k`, ...). Override keys are `section.field`
(`train.lr=3e-4`), a bare `field` when exactly one section has it, or `section.field.key...` inside a nested field
(`model.moe.num_experts=16`, `model.moe.router_options.k=1`, `model.moe.router_options.noise=learned`,
`model.moe.method_options.noise_scale=0.5`). The router (or layer-level method) is chosen by `router`, never by a
key. Values are parsed as YAML (`1e-3`, `true`, `[16, 32, 64]`, `null`).
`resolve_config_file` starts from a YAML file instead of a preset (a run folder's config.yaml is one); a config
written before the MoE config was nested (flat `num_experts`, `k`, `router_options` in the model section) is read
in today's spelling (`upgrade_run_config`).
`plugins`: the plugins (`smoe.plugins`) that registered the task, router, base router or residual rule a run
uses, recorded in config.yaml so that loading the run (`smoe.load_model`, `smoe show`, a grid's worker) imports
them first. A key the file sets is never overridden silently (the router set both at the top and in `model:`
differently is an error naming both; an unknown top-level key is an error).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from smoe._files import read_text
from smoe._validate import check_choice, check_int
from smoe.layer import LAYERS, available_layers
from smoe.moe_config import MoEConfig, nest_flat_moe
from smoe.plugins import load_plugins
from smoe.residual import RULES
from smoe.routing import available_routers
from smoe.routing.base import RouterOptions
from smoe.routing.registry import ROUTERS
from smoe.workbench.tasks import Task, get_task
from smoe.workbench.tasks.base import TASKS
from smoe.workbench.train.config import TrainConfig

SECTIONS = ("data", "model", "train")
# the top-level keys of a config file: RunConfig's fields, the plugins it imports, the parallel section a torchrun
# run records, and the provenance of the code that wrote it
FILE_KEYS = ("task", "preset", "router", "seed", "device", "plugins", *SECTIONS, "parallel", "provenance")
MAX_CONFIG_BYTES = 2**20


@dataclass
class RunConfig:
    """Everything that defines a run; `to_dict()` is what config.yaml and every checkpoint hold."""

    task: str
    preset: str
    router: str
    seed: int
    device: str
    data: object
    model: dict
    train: TrainConfig
    plugins: list[str] = field(default_factory=list)

    def model_config(self, **derived):
        """The task's model config dataclass: the model section plus the fields derived from the data."""
        return get_task(self.task).model_config(**self.model, **derived)

    def to_dict(self, model_config=None) -> dict:
        """Every field (plugins only when there are some: a run without plugins reads as before they existed)."""
        head = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in SECTIONS and (f.name != "plugins" or self.plugins)}
        model = dataclasses.asdict(model_config) if model_config is not None else self.model
        return {**head, "data": dataclasses.asdict(self.data), "model": model,
                "train": dataclasses.asdict(self.train)}


def parse_value(text: str):
    """YAML value, with numbers in exponent form (`1e-3`, which YAML 1.1 reads as a string) as floats."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ValueError(f"{text!r} is not a YAML value ({problem})") from None
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def parse_override(item: str) -> tuple[str, object]:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"--set expects key=value, got {item!r}")
    try:
        return key.strip(), parse_value(value.strip())
    except ValueError as e:
        raise ValueError(f"--set {item}: {e}") from None


def _field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def apply_override(sections: dict[str, dict], task: Task, key: str, value) -> None:
    """Set `key` (section.field[.subkey...] or a bare field) to `value` in the section dicts."""
    classes = {"data": task.data_config, "model": task.model_config, "train": TrainConfig}
    path = key.split(".")
    if path[0] not in SECTIONS:
        owners = [s for s in SECTIONS if path[0] in _field_names(classes[s])]
        if len(owners) != 1:
            where = f"in sections {owners}" if owners else "in no section"
            raise ValueError(f"--set {key}: the key is {where}; write it as section.field with section one of "
                             f"{list(SECTIONS)}")
        path = [owners[0], *path]
    section, name, rest = path[0], ".".join(path[1:2]), path[2:]
    if section == "model" and name == "moe" and rest[:1] in (["router"], ["method"]):
        raise ValueError(f"--set {key}: choose the router (or layer-level method) with --router")
    valid = [f for f in _field_names(classes[section]) if not (section == "model" and f in task.derived)]
    if name not in valid:
        hint = " (derived from the data)" if name in task.derived else ""
        raise ValueError(f"--set {key}: unknown {section} key {name!r}{hint}; valid keys: {', '.join(valid)}")
    if not rest:
        _assign(sections[section], name, value)
        return
    container = copy.deepcopy(sections[section].get(name) or {})
    if not isinstance(container, dict):
        raise ValueError(f"--set {key}: {section}.{name} is not a mapping")
    node = container
    for part in rest[:-1]:
        if node.get(part) is None:  # absent, or null in a config file (method_options: null)
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise ValueError(f"--set {key}: {part} is not a mapping")
    _assign(node, rest[-1], value)
    sections[section][name] = container


def _assign(target: dict, name: str, value) -> None:
    """target[name] = value, an int becoming a float where the current value is a float (lr=1)."""
    old = target.get(name)
    if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    target[name] = value


def resolve_config(task: str, preset: str = "tiny", router: str = "topk", seed: int = 0, device: str = "cpu",
                   steps: int | None = None, overrides: Sequence[str | tuple[str, object]] = ()) -> RunConfig:
    """The RunConfig of `task` with `preset`, `router`, overrides (`key=value` strings, or (key, parsed value)
    pairs) and `steps` applied."""
    t = get_task(task)
    check_choice("preset", preset, tuple(t.presets))
    p = t.presets[preset]
    sections = {"data": dict(p.get("data", {})), "model": dict(p.get("model", {})), "train": dict(p.get("train", {}))}
    return _resolve(t, preset, router, seed, device, steps, overrides, sections)


def compressed_schedule(task: str, preset: str, steps: int) -> list[str]:
    """Overrides that compress `preset`'s schedule to `steps` optimizer steps: train.steps = schedule_steps = steps;
    warm-up and checkpoint intervals scaled by steps / the preset's steps; as many evaluations as the preset has,
    evenly spaced with no short last interval (`even_interval`)."""
    check_int("steps", steps, low=1)
    base = TrainConfig(**get_task(task).presets[preset].get("train", {}))
    factor = steps / base.steps

    def scaled(value: int, low: int) -> int:
        return max(round(value * factor), low) if value else 0

    evals = even_interval(steps, base.steps / base.eval_every) if base.eval_every else 0
    return [f"train.steps={steps}", f"train.schedule_steps={steps}",
            f"train.warmup_steps={scaled(base.warmup_steps, 0)}", f"train.eval_every={evals}",
            f"train.checkpoint_every={scaled(base.checkpoint_every, 1)}"]


def even_interval(steps: int, count: float) -> int:
    """The interval nearest steps / count (the smaller on ties) after whose last multiple at least half an interval
    remains before `steps`, so evaluations are evenly spaced and the final one (at `steps`) never follows a periodic
    one by a step or two."""
    target = steps / max(count, 1.0)
    fits = [e for e in range(1, steps + 1) if steps % e == 0 or steps % e >= e / 2]
    return min(fits, key=lambda e: (abs(e - target), e))



def resolve_config_file(path: str | Path, router: str | None = None, seed: int | None = None,
                        device: str | None = None, steps: int | None = None,
                        overrides: Sequence[str | tuple[str, object]] = ()) -> RunConfig:
    """The RunConfig a YAML file describes (a run folder's config.yaml, or a file with its keys: task, preset,
    router, seed, device and the data / model / train sections), with router, seed, device (when given), steps and
    overrides applied as in `resolve_config`. Sections and fields the file leaves out come from its preset; a
    router other than the file's keeps the options every router has (k) and starts from the task's options for
    that router otherwise."""
    path = Path(path)
    try:
        config = yaml.safe_load(read_text(path, MAX_CONFIG_BYTES))
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ValueError(f"config {str(path)!r} is not valid YAML ({problem})") from None
    except ValueError as e:
        raise ValueError(f"config must be a readable YAML file of at most 1 MiB: {e}") from None
    if not isinstance(config, dict) or not isinstance(config.get("task"), str):
        raise ValueError(f"config {str(path)!r} must be a YAML mapping with a task (e.g. a run folder's config.yaml)")
    unknown = [key for key in config if key not in FILE_KEYS]
    if unknown:
        raise ValueError(f"config {str(path)!r}: unknown key {unknown[0]!r}; valid keys: {', '.join(FILE_KEYS)}")
    import_recorded(config, path)
    t = get_task(config["task"])
    preset = config.get("preset", "tiny")
    check_choice("preset", preset, tuple(t.presets))
    sections = {}
    for name in SECTIONS:
        given = config.get(name)
        given = {} if given is None else given  # `data:` with nothing under it
        if not isinstance(given, dict):
            raise ValueError(f"config {str(path)!r}: section {name!r} must be a mapping, got {given!r}")
        sections[name] = _merge(t.presets[preset].get(name, {}), nest_flat_moe(given) if name == "model" else given)
    model = sections["model"]
    for key in t.derived:
        model.pop(key, None)
    raw = nest_flat_moe(config.get("model") or {}) if isinstance(config.get("model"), dict) else {}
    moe_given = raw.get("moe") if isinstance(raw.get("moe"), dict) else {}
    inner, top = moe_given.get("router"), config.get("router")
    if top is not None and inner is not None and top != inner and moe_given.get("method") != top:
        raise ValueError(f"config {str(path)!r} sets the router twice, differently: router: {top} (top level) and "
                         f"model.moe.router: {inner}; keep one")
    saved_router = top or inner or "topk"
    if router is not None and router != saved_router and isinstance(model.get("moe"), dict):
        common = {f.name for f in dataclasses.fields(RouterOptions)}
        moe = {k: v for k, v in model["moe"].items() if k not in ("router", "method", "method_options")}
        moe["router_options"] = {k: v for k, v in (moe.get("router_options") or {}).items() if k in common}
        model["moe"] = moe
    return _resolve(t, preset, router or saved_router, config.get("seed", 0) if seed is None else seed,
                    config.get("device", "cpu") if device is None else device, steps, overrides, sections)


def _merge(base: dict, given: dict) -> dict:
    """base with given's values, mapping into mapping key by key (a nested field given in part keeps the rest)."""
    out = dict(base)
    for key, value in given.items():
        out[key] = _merge(out[key], value) if isinstance(out.get(key), dict) and isinstance(value, dict) else value
    return out


def _resolve(t: Task, preset: str, router: str, seed: int, device: str, steps: int | None,
             overrides: Sequence[str | tuple[str, object]], sections: dict[str, dict]) -> RunConfig:
    """The RunConfig of task t from its sections (the preset's or a file's), with router, overrides and steps."""
    check_choice("router", router, tuple(available_routers() + available_layers()))
    check_int("seed", seed, low=0)
    check_device(device)
    sections["model"] = {**sections["model"], "moe": _select_router(t, router, sections["model"].get("moe"))}
    for item in overrides:
        apply_override(sections, t, *(item if isinstance(item, tuple) else parse_override(item)))
    if steps is not None:
        sections["train"]["steps"] = steps
    for section, values in sections.items():
        check_finite_floats(section, values)
    data = _build(t.data_config, sections["data"], "data")
    train = _build(TrainConfig, sections["train"], "train")
    _build(t.model_config, {**sections["model"], **t.derived}, "model")  # validate before loading any data
    return RunConfig(task=t.name, preset=preset, router=router, seed=seed, device=device, data=data,
                     model=sections["model"], train=train, plugins=run_plugins(t.name, sections["model"]))


def run_plugins(task: str, model: dict) -> list[str]:
    """The plugins (their specs) that registered what a run of `task` with this model section uses: the task, the
    router (or layer-level method), the base router of a layer-level method, the residual rule."""
    moe = model.get("moe") if isinstance(model.get("moe"), dict) else {}
    method, router = moe.get("method"), moe.get("router")
    used = [(TASKS, task), (LAYERS, method), (ROUTERS, router), (RULES, model.get("rule"))]
    return list(dict.fromkeys(registry.plugin(name) for registry, name in used
                              if isinstance(name, str) and name in registry and registry.plugin(name) is not None))


def import_recorded(config: dict, source: str | Path) -> None:
    """Import the plugins a config (file) records under `plugins` (a PluginError names the plugin and the file)."""
    plugins = config.get("plugins") or []
    if not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
        raise ValueError(f"{source}: plugins must be a list of modules or .py files, got {plugins!r}")
    load_plugins(plugins, found=str(source))


def _select_router(t: Task, router: str, moe: object) -> object:
    """The model section's `moe` mapping with `router` selected (a layer-level method: `method`, around the
    router the section names or the default one), its router options the task's for that router, then the
    section's own. Anything but a mapping is left to the model config to refuse."""
    if moe is not None and not isinstance(moe, dict):
        return moe
    moe = dict(moe or {})
    if router in available_layers():
        moe["method"] = router
    else:
        moe["router"] = router
        moe.pop("method", None)
        moe.pop("method_options", None)
    chosen = moe.get("router", MoEConfig.__dataclass_fields__["router"].default)
    given = moe.get("router_options") or {}
    task_options = dataclasses.asdict(t.router_options[chosen]) if chosen in t.router_options else {}
    moe["router_options"] = {**task_options, **given} if isinstance(given, dict) else given
    return moe


def upgrade_run_config(config: dict) -> dict:
    """A run config (config.yaml, a checkpoint's) written by an older smoe in today's spelling: a model section
    with flat MoE fields (num_experts, k, router_options, ...) nested as `moe` (`smoe.moe_config.nest_flat_moe`)
    and written out in full, as a run of today writes it (every field of the task's model config). Anything else
    comes back as it is."""
    model = config.get("model") if isinstance(config, dict) else None
    if not isinstance(model, dict) or nest_flat_moe(model) == model or "task" not in config:
        return config
    task = get_task(config["task"])
    return {**config, "model": dataclasses.asdict(_build(task.model_config, nest_flat_moe(model), "model"))}


def check_finite_floats(name: str, value) -> None:
    """ValueError naming the key of the first NaN or infinite float anywhere in a nested config value."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list | tuple) else ()
    for key, item in items:
        check_finite_floats(f"{name}.{key}" if isinstance(value, dict) else f"{name}[{key}]", item)


def _build(cls: type, values: dict, section: str):
    try:
        return cls(**values)
    except TypeError as e:  # an unknown key from a preset or override
        raise ValueError(f"{section}: {e}; valid keys: {', '.join(_field_names(cls))}") from e
    except ValueError as e:
        raise ValueError(f"{section}: {e}") from e


def check_device(device: str) -> None:
    if not isinstance(device, str):
        raise ValueError(f"device must be 'cpu' or 'cuda[:i]', got {device!r}")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"device must be 'cpu' or 'cuda[:i]', got {device!r}") from e
    check_choice("device type", dev.type, ("cpu", "cuda"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use --device cpu")

def run_config_from_dict(config: dict, source: str | Path = "config") -> RunConfig:
    """The RunConfig a run directory's config.yaml describes (fields derived from the data are rebuilt);
    `source` (the file) names it in errors."""
    try:
        import_recorded(config, source)
        task = get_task(config["task"])
        model = {k: v for k, v in nest_flat_moe(config["model"]).items() if k not in task.derived}
        return RunConfig(task=config["task"], preset=config["preset"], router=config["router"],
                         seed=config["seed"], device=config["device"], data=_build(task.data_config, config["data"],
                                                                                   "data"),
                         model=model, train=_build(TrainConfig, config["train"], "train"),
                         plugins=list(config.get("plugins") or []))
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{source} is not a run configuration (config.yaml of `smoe train`): missing or bad field "
                         f"{e!r}") from e
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from e


