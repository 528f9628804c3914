"""The house rules of the package, checked on its source: two wings with one-way imports, no import cycle, no
function-level smoe import, modules under 500 lines, one registry, one typed config per MoE layer (no untyped
options dict in a config, `k` defaulted only by the routers' options)."""

import ast
import dataclasses
import importlib
import inspect
from pathlib import Path

import pytest

from smoe.layer import LAYERS
from smoe.registry import Registry
from smoe.residual import RULES
from smoe.routing.base import RouterOptions
from smoe.routing.registry import ROUTERS
from smoe.workbench.tasks.base import TASKS

ROOT = Path(__file__).resolve().parents[1] / "smoe"
LIBRARY = ("smoe.routing", "smoe.dispatch", "smoe.experts", "smoe.layer", "smoe.moe_config", "smoe.s2moe",
           "smoe.residual",
           "smoe.blocks", "smoe.models", "smoe.expert_parallel", "smoe.integrations", "smoe._validate",
           "smoe.collectives", "smoe.registry", "smoe.data", "smoe.launch_local", "smoe.plugins", "smoe.host_sync",
           "smoe.conformance")


def modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def smoe_imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, inside a function or class) for every `smoe` import of a file."""
    found = []
    tree = ast.parse(path.read_text())
    nested = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
              for n in ast.walk(f) if n is not f}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("smoe"):
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("smoe")]
        else:
            continue
        found += [(name, id(node) in nested) for name in names]
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: {t for t, _ in smoe_imports(p) if t in mods and t != m} for m, p in mods.items()}


def test_the_library_never_imports_the_workbench():
    bad = [(m, t) for m, targets in graph().items() if m.startswith(LIBRARY) for t in targets
           if t.startswith("smoe.workbench") or t in ("smoe.cli", "smoe.bench")]
    assert bad == []


def test_no_function_level_smoe_import():
    bad = [(str(p.relative_to(ROOT)), t) for p in modules().values() for t, inside in smoe_imports(p) if inside]
    assert bad == []


def test_no_import_cycle():
    g, state, cycles = graph(), {}, []

    def visit(m: str, path: list[str]) -> None:
        state[m] = "open"
        for t in sorted(g[m]):
            if state.get(t) == "open":
                cycles.append([*path[path.index(t):], t])
            elif t not in state:
                visit(t, [*path, t])
        state[m] = "done"

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_no_module_over_500_lines():
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in modules().values()}
    assert {f: n for f, n in sizes.items() if n > 500} == {}


def test_one_registry_implementation():
    """Every registry is a `smoe.registry.Registry`: no module keeps its own dict of registered names."""
    assert all(isinstance(r, Registry) for r in (ROUTERS, LAYERS, RULES, TASKS))
    assert ROUTERS.names() and LAYERS.names() == ["s2moe"] and "momentum" in RULES and "lm-bbc" in TASKS


def test_registry_decorator_duplicates_wildcards_and_errors():
    reg: Registry[type] = Registry("widget", name_attr="widget_name")

    @reg.register("alpha")
    class Alpha:
        """Alpha widget (a paper, 2025).

        More text."""

    reg.add("alpha", Alpha)  # the same object again is fine (a module imported twice)
    reg.add("beta", type("Beta", (), {}))
    assert Alpha.widget_name == "alpha" and reg.get("alpha") is Alpha and "beta" in reg
    assert reg.names() == ["alpha", "beta"] and reg.names("a*") == ["alpha"] and list(reg) == ["alpha", "beta"]
    assert reg.summary("alpha") == "Alpha widget (a paper, 2025)."
    with pytest.raises(ValueError, match=r"widget 'alpha' is registered twice: by Alpha .* and by Other"):
        reg.add("alpha", type("Other", (), {}))
    with pytest.raises(ValueError, match="unknown widget 'gamma'; available widgets: alpha, beta"):
        reg.get("gamma")
    with pytest.raises(ValueError, match="non-empty string"):
        reg.add("", type("Other", (), {}))


WORKBENCH_FLOORS = ("train", "measure", "tasks", "run", "results", "report", "grid", "claims")  # ground floor first
WORKBENCH_ROOT = {"smoe.workbench", "smoe.workbench.document", "smoe.workbench.numbers"}  # the face, shared helpers


def floor(module: str) -> int | None:
    """The workbench floor of a module (`smoe.workbench.run.config` -> 3); None outside a workbench subpackage."""
    parts = module.split(".")
    inside = len(parts) > 2 and parts[1] == "workbench" and parts[2] in WORKBENCH_FLOORS
    return WORKBENCH_FLOORS.index(parts[2]) if inside else None


def test_workbench_imports_run_only_down_its_data_flow():
    back = [(m, t) for m, targets in graph().items() for t in targets
            if floor(m) is not None and floor(t) is not None and floor(t) > floor(m)]
    assert back == []


def test_the_workbench_root_holds_only_its_face_and_shared_helpers():
    root = {m for m in modules() if m.startswith("smoe.workbench") and floor(m) is None}
    assert root == WORKBENCH_ROOT
    shared = [(m, t) for m in WORKBENCH_ROOT for t in graph()[m] if t.startswith("smoe.workbench")]
    assert shared == []  # a shared helper imports no workbench room


def package_dataclasses() -> list[type]:
    """Every dataclass defined in a module of the package."""
    found = []
    for name in modules():
        module = importlib.import_module(name)
        found += [c for _, c in inspect.getmembers(module, inspect.isclass)
                  if dataclasses.is_dataclass(c) and c.__module__ == name]
    return found


def test_no_config_holds_an_untyped_options_dict():
    """The options of a router or layer-level method, and a model's MoE layer, are typed dataclasses (MoEConfig,
    the router's Options), never a dict: a dict hides unknown keys and re-declares defaults."""
    configs = package_dataclasses()
    assert any(c.__name__ == "LMConfig" for c in configs) and any(c.__name__ == "SkewedStream" for c in configs)
    untyped = [(c.__qualname__, f.name, str(f.type)) for c in configs for f in dataclasses.fields(c)
               if f.name in ("router_options", "method_options", "moe") and "dict" in str(f.type)
               and "Options]" not in str(f.type)]  # {router: its Options} is typed
    assert untyped == []
    moe_fields = {c.__name__: str(f.type) for c in configs for f in dataclasses.fields(c) if f.name == "moe"}
    assert all(moe_fields[c] == "MoEConfig" for c in ("StackConfig", "LMConfig", "ViTConfig", "VAEConfig"))


def test_k_is_defaulted_only_by_the_routers_options():
    """A dataclass field or a parameter named `k` with a default exists only in a router's Options (subclasses of
    `RouterOptions`): every other place takes k from there."""
    defaulted = []
    for name, path in modules().items():
        module = importlib.import_module(name)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                fields = [s for s in node.body if isinstance(s, ast.AnnAssign) and s.value is not None
                          and isinstance(s.target, ast.Name) and s.target.id == "k"]
                cls = getattr(module, node.name, None)
                if fields and not (isinstance(cls, type) and issubclass(cls, RouterOptions)):
                    defaulted.append(f"{name}.{node.name}")
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args
                positional = [*args.posonlyargs, *args.args]
                with_default = positional[len(positional) - len(args.defaults):]
                with_default += [a for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None]
                defaulted += [f"{name}.{node.name}()" for a in with_default if a.arg == "k"]
    assert defaulted == []
