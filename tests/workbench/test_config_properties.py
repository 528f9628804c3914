"""Properties of what users type: config files (random nested YAML, unknown keys at every level, extreme numbers,
wrong types), `--set` values, compare entries (labels, router specs) and router specs alone. Each resolves or is
refused with a ValueError, never another exception; what resolves is usable (its model config builds, its run
folders have valid names)."""

import contextlib
import dataclasses
import math

import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from smoe.routing import available_routers, build_router, router_options
from smoe.routing.registry import parse_router_spec
from smoe.workbench.grid.compare import CompareConfig
from smoe.workbench.run.config import SECTIONS, resolve_config, resolve_config_file
from smoe.workbench.run.entry import parse_entries
from smoe.workbench.tasks import available_tasks, get_task
from smoe.workbench.train.config import TrainConfig

TASKS = available_tasks()
EXTREMES = [0, -1, 1, 2**31, 2**63, -(2**63), 10**30, 10**400, 1e-320, 1e308, -1e308, 1.5, 0.5, -0.0, math.inf,
            -math.inf, math.nan]
NAMES = st.from_regex(r"[a-z][a-z_]{0,7}", fullmatch=True)
scalars = st.sampled_from(EXTREMES) | st.none() | st.booleans() | st.integers(-3, 70) | st.text(max_size=4)
values = scalars | st.lists(scalars, max_size=2) | st.dictionaries(NAMES, scalars, max_size=2)


def keys_of(task: str) -> dict[str, list[str]]:
    t = get_task(task)
    return {"data": [f.name for f in dataclasses.fields(t.data_config)],
            "model": [f.name for f in dataclasses.fields(t.model_config)],
            "train": [f.name for f in dataclasses.fields(TrainConfig)]}


def usable(run) -> None:
    """What resolved builds its model config, saves as YAML, and takes an optimizer step with finite values."""
    task = get_task(run.task)
    task.model_config(**run.model, **task.derived)
    yaml.safe_dump(run.to_dict())
    train = run.train
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([weight], lr=train.lr_at(0), betas=(train.beta1, train.beta2),
                                  weight_decay=train.weight_decay)
    weight.grad = torch.full((3,), 1e-3)
    optimizer.step()
    assert torch.isfinite(weight).all() and all(math.isfinite(train.lr_at(s)) for s in (0, train.schedule_steps))


@st.composite
def config_files(draw):
    """A run's config.yaml with 1-4 values replaced or keys added at any level."""
    task = draw(st.sampled_from(TASKS))
    config = resolve_config(task).to_dict()
    for _ in range(draw(st.integers(1, 4))):
        node, path = config, ()
        while True:
            inner = sorted(k for k, v in node.items() if isinstance(v, dict))
            if not inner or draw(st.integers(0, 3)) == 0:
                break
            key = draw(st.sampled_from(inner))
            node, path = node[key], (*path, key)
        key = draw(NAMES if not node or draw(st.integers(0, 3)) == 0 else st.sampled_from(sorted(node)))
        node[key] = draw(values)
    return config


def leaves(node, path: tuple = ()):
    """(path, value) of every leaf of a nested dict ({} has none)."""
    if isinstance(node, dict):
        for key, item in node.items():
            yield from leaves(item, (*path, key))
    else:
        yield path, node


def resolved_at(resolved: dict, path: tuple):
    for key in path:
        resolved = resolved[key]
    return resolved


@settings(max_examples=150)
@given(config=config_files())
def test_a_config_file_resolves_or_is_a_value_error_and_ignores_nothing(tmp_path_factory, config):
    path = tmp_path_factory.getbasetemp() / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    try:
        run = resolve_config_file(path)
    except ValueError:
        return
    usable(run)
    # every value of the file is the resolved one (the fields derived from the data are recomputed, torchrun's
    # parallel section is a record, an empty section takes the preset's)
    ignored = [("parallel",), *(("model", key) for key in [*get_task(run.task).derived, "router"])]
    for where, value in leaves(config):
        if where[:1] in ignored or where[:2] in ignored or (len(where) == 1 and where[0] in SECTIONS and value is None):
            continue
        assert resolved_at(run.to_dict(), where) == value, (where, value)


@settings(max_examples=60)
@given(text=st.text(max_size=60))
def test_any_text_as_a_config_file_resolves_or_is_a_value_error(tmp_path_factory, text):
    path = tmp_path_factory.getbasetemp() / "any.yaml"
    path.write_text(text, encoding="utf-8")
    with contextlib.suppress(ValueError):
        usable(resolve_config_file(path))


@st.composite
def overrides(draw):
    """(task, router, "key=value"): mostly a real key (section.field, a bare field, a router option) and a YAML value
    (an extreme number, a wrong type), now and then an unknown key or any text."""
    task = draw(st.sampled_from(TASKS))
    keys = keys_of(task)
    real = st.sampled_from([f"{section}.{name}" for section, names in keys.items() for name in names]
                           + [name for names in keys.values() for name in names]
                           + ["model.moe.router_options.noise", "model.moe.router_options.k", "model.rule_options.mu"])
    key = draw([real, real, real, NAMES, st.text(max_size=8)][draw(st.integers(0, 4))])
    value = draw([scalars, scalars, scalars, values, st.text(max_size=6)][draw(st.integers(0, 4))])
    text = value if isinstance(value, str) and draw(st.booleans()) else \
        yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
    return task, draw(st.sampled_from(available_routers())), f"{key}={text}"


@settings(max_examples=200)
@given(case=overrides())
def test_a_set_value_resolves_or_is_a_value_error(case):
    task, router, item = case
    try:
        run = resolve_config(task, router=router, overrides=[item])
    except ValueError:
        return
    usable(run)


SYNTAX = st.sampled_from([*available_routers()[:4], "s2moe", "k", "p", "=", ":", "+", ",", "x", "1", "0.5", "-",
                          "model.k", "rule", "momentum", " ", "é", "/", "..", "a" * 60])


@settings(max_examples=200)
@given(text=st.lists(SYNTAX, max_size=12).map("".join) | st.text(max_size=40))
def test_compare_entries_parse_or_are_a_value_error_and_name_valid_folders(text):
    try:
        entries = parse_entries(text)
        config = CompareConfig(task="digits", entries=entries, out="out", seeds=1)
        for entry in entries:
            config.run_config(entry, 0)
    except ValueError:
        return
    folders = [f"{entry.folder}-s0" for entry in entries]
    assert len(set(folders)) == len(folders)
    for folder in folders:
        assert folder not in ("", ".", "..") and "/" not in folder and "\0" not in folder
        assert len(folder.encode()) <= 255


@st.composite
def router_specs(draw):
    name = draw(st.sampled_from(available_routers()) | st.text(max_size=6))
    options = router_options(name) if name in available_routers() else {}
    pairs = draw(st.lists(st.tuples(st.sampled_from([*options, "bogus"]) if options else st.text(max_size=4),
                                    scalars.map(repr) | st.text(max_size=6)), max_size=3))
    return ":".join([name, *(f"{key}={value}" for key, value in pairs)])


@pytest.mark.parametrize("num_experts", [1, 4])
@settings(max_examples=150)
@given(spec=router_specs())
def test_a_router_spec_builds_or_is_a_value_error(spec, num_experts):
    try:
        name, options = parse_router_spec(spec)
        build_router(name, d_model=8, num_experts=num_experts, **options)
    except ValueError:
        pass


# ---------------------------------------------------------------- what the properties found, pinned


@pytest.mark.parametrize("section", ["0", "''", "[]", "false"])
def test_a_section_that_is_not_a_mapping_is_refused_even_when_falsy(tmp_path, section):
    path = tmp_path / "config.yaml"
    path.write_text(f"task: digits\ndata: {section}\n")
    with pytest.raises(ValueError, match="section 'data' must be a mapping"):
        resolve_config_file(path)
    path.write_text("task: digits\ndata:\n")  # nothing under it: the preset's
    assert resolve_config_file(path).data == resolve_config("digits").data


def test_the_float_fields_of_train_are_floats_whatever_yaml_gave():
    config = TrainConfig(lr=1, beta1=0, beta2=0, weight_decay=0, grad_clip=1, min_lr_ratio=0)
    assert all(type(getattr(config, name)) is float
               for name in ("lr", "beta1", "beta2", "weight_decay", "grad_clip", "min_lr_ratio"))
