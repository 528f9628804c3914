"""Plugins: routers, layer-level methods, residual rules and tasks from outside the package.

A plugin is a Python module that registers things when it is imported (`@register_router("cosine")`, ...). The
command line finds plugins three ways, in this order:

1. the entry point group `smoe.plugins` of every installed distribution (a package's pyproject.toml:
   `[project.entry-points."smoe.plugins"]` with `cosine = "mine.cosine"`);
2. the environment variable `SMOE_PLUGINS`: modules or .py files, comma-separated;
3. `--import MODULE_OR_FILE.py` on any command that builds a model (repeatable).

A spec that ends in `.py` or holds a `/` is a file: it is imported as the module `smoe_plugin_<stem>_<hash>`, a
name that follows from its absolute path, so every process that imports the file (a grid's workers, a later
`smoe.load_model`) gives its classes the same module name. Anything else is a module name, imported the usual
way (it must be on the path). Each plugin is imported once per process; one that fails to import is a
`PluginError` naming it and the exception, and so is a name that two plugins (or a plugin and smoe) register
(`smoe.registry`). `provenance()` says which smoe, torch and plugins (with the sha256 of each source file) ran.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import platform
import re
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import torch

from smoe.registry import forget_plugin, registering_for

ENTRY_POINT_GROUP = "smoe.plugins"
ENV_VAR = "SMOE_PLUGINS"
_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


class PluginError(ValueError):
    """A plugin could not be imported (the message names it, where it came from, and the exception)."""


@dataclass(frozen=True)
class Plugin:
    """One imported plugin. spec: what imports it again (an absolute .py path or a module name); module: its name
    in sys.modules; file: its source file (None for a namespace package); sha256: of that file; found: how it
    was found ("--import", "SMOE_PLUGINS", "entry point NAME of DIST VERSION")."""

    spec: str
    module: str
    file: str | None
    sha256: str | None
    found: str

    def record(self) -> dict:
        return asdict(self)


_LOADED: dict[str, Plugin] = {}  # spec -> the plugin imported for it, in import order


def is_file(spec: str) -> bool:
    """Whether a plugin spec names a file (it ends in .py or holds a path separator) rather than a module."""
    return spec.endswith(".py") or "/" in spec or os.sep in spec


def canonical(spec: str) -> str:
    """A plugin spec as recorded: a file as its absolute path, a module name as is (PluginError otherwise)."""
    if not isinstance(spec, str) or not spec.strip():
        raise PluginError(f"a plugin must be a module name or a .py file, got {spec!r}")
    spec = spec.strip()
    if is_file(spec):
        return str(Path(spec).expanduser().resolve())
    if not _MODULE_NAME.fullmatch(spec):
        raise PluginError(f"plugin {spec!r} is neither a module name (mine.cosine) nor a .py file")
    return spec


def file_module_name(path: str) -> str:
    """The module name a plugin file is imported as: `smoe_plugin_<stem>_<8 hex digits of its absolute path>`."""
    stem = re.sub(r"\W", "_", Path(path).stem)
    return f"smoe_plugin_{stem}_{hashlib.sha256(path.encode()).hexdigest()[:8]}"


def _import_file(path: str) -> object:
    name = file_module_name(path)
    if name in sys.modules:
        return sys.modules[name]
    if not Path(path).is_file():
        raise FileNotFoundError(f"no such file: {path}")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before running it: dataclasses and pickle look the module up by name
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def load_plugin(spec: str, found: str = "--import") -> Plugin:
    """Import the plugin `spec` (a module name or a .py file) unless this process has; returns its record."""
    key = canonical(spec)
    if key in _LOADED:
        return _LOADED[key]
    try:
        with registering_for(key):
            module = _import_file(key) if is_file(key) else importlib.import_module(key)
    except Exception as e:
        forget_plugin(key)  # what it registered before it failed
        raise PluginError(f"plugin {key} (from {found}) could not be imported: {type(e).__name__}: {e}") from e
    file = getattr(module, "__file__", None)
    plugin = Plugin(spec=key, module=module.__name__, file=file, sha256=file_sha256(file), found=found)
    _LOADED[key] = plugin
    return plugin


def load_plugins(specs: Iterable[str], found: str = "--import") -> list[Plugin]:
    """Import every plugin of `specs` (each once per process); their records."""
    return [load_plugin(spec, found) for spec in specs]


def env_specs(environ: dict[str, str] | None = None) -> list[str]:
    """The plugins `SMOE_PLUGINS` names (comma-separated; empty items ignored)."""
    value = (os.environ if environ is None else environ).get(ENV_VAR, "")
    return [item.strip() for item in value.split(",") if item.strip()]


def load_entry_points() -> list[Plugin]:
    """Import the module of every entry point in the group `smoe.plugins` of the installed distributions."""
    plugins = []
    for point in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda p: p.name):
        dist = getattr(point, "dist", None)
        found = f"entry point {point.name}" + (f" of {dist.name} {dist.version}" if dist is not None else "")
        plugins.append(load_plugin(point.module, found))
    return plugins


def load_all(imports: Sequence[str] = ()) -> list[Plugin]:
    """What the command line does first: entry points, then SMOE_PLUGINS, then every `--import`."""
    return [*load_entry_points(), *load_plugins(env_specs(), ENV_VAR), *load_plugins(imports)]


def loaded() -> list[Plugin]:
    """Every plugin this process has imported, in order."""
    return list(_LOADED.values())


def file_sha256(path: str | None) -> str | None:
    """The SHA-256 of a file's bytes (None without a file)."""
    if path is None or not Path(path).is_file():
        return None
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@lru_cache(maxsize=1)
def _checkout() -> tuple[str | None, bool | None]:
    """(commit, dirty) of the git checkout smoe runs from; (None, None) when it is not run from one."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None, None
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit, bool(status.strip())


def provenance(plugins: Sequence[str] | None = None) -> dict:
    """Which code ran: smoe's version, the git commit and dirty flag of its checkout (None when installed), torch,
    Python, and the plugins (`plugins`: their specs; default every plugin imported), each with its sha256."""
    commit, dirty = _checkout()
    wanted = loaded() if plugins is None else [_LOADED[canonical(s)] for s in plugins if canonical(s) in _LOADED]
    return {"smoe": getattr(sys.modules.get("smoe"), "__version__", None), "commit": commit, "dirty": dirty,
            "torch": torch.__version__, "python": platform.python_version(),
            "plugins": [plugin.record() for plugin in wanted]}


def split_imports(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(argv without them, the values) of every `--import VALUE` / `--import=VALUE` in a command line."""
    rest, imports, args = [], [], list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--import":
            if not args:
                raise PluginError("--import needs a value: a module name or a .py file")
            imports.append(args.pop(0))
        elif arg.startswith("--import="):
            imports.append(arg.removeprefix("--import="))
        else:
            rest.append(arg)
    return rest, imports
