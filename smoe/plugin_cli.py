"""The command line's plugin commands: `smoe check-router` (the conformance checks of `smoe.conformance`) and
`smoe new-router` (a commented template to start from), the `--import` option, and the command line results
record (with its plugins, so that it runs again)."""

from __future__ import annotations

import argparse
import importlib.resources
import re
import shlex
import sys
from pathlib import Path

from smoe.conformance import CHECKS, check_router, failures
from smoe.layer import available_layers
from smoe.plugins import ENTRY_POINT_GROUP, ENV_VAR, loaded
from smoe.routing import available_routers
from smoe.routing.registry import parse_router_spec


def recorded_command(name: str, argv: list[str]) -> str:
    """`smoe NAME ARGV` as results record it: with an `--import` for every plugin given by --import or SMOE_PLUGINS
    (absolute paths), so that it runs again as it ran (entry-point plugins are found again when installed)."""
    imports = [w for p in loaded() if not p.found.startswith("entry point") for w in ("--import", p.spec)]
    return " ".join(shlex.quote(w) for w in ["smoe", name, *imports, *argv])


def cmd_check_router(args: argparse.Namespace) -> int:
    """The conformance checks (`smoe.conformance`) of each named router (default: every router and layer-level
    method); one line per check; exit status 1 when any check fails."""
    specs = args.names or sorted(available_routers() + available_layers())
    bad = 0
    for spec in specs:
        try:
            name, options = parse_router_spec(spec)
            results = check_router(name, options, num_experts=args.experts, checks=args.checks)
        except ValueError as e:
            print(f"smoe check-router: error: {e}", file=sys.stderr)
            return 2
        failed = failures(results)
        bad += bool(failed)
        print(f"{spec}: {'FAILED ' + ', '.join(r.name for r in failed) if failed else 'conforms'}")
        for result in results:
            print(f"  {result.line()}")
    if len(specs) > 1:
        print(f"{len(specs) - bad} of {len(specs)} conform")
    return 1 if bad else 0


TEMPLATE_NAME, TEMPLATE_CLASS = "my_router", "MyRouter"


def new_router_source(name: str) -> str:
    """The router template (smoe/routing/_template.py) for a router registered as `name`."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ValueError(f"the router name must be lower case letters, digits and _ (a Python name), got {name!r}")
    if name in available_routers() + available_layers():
        raise ValueError(f"a router {name!r} is already registered; choose another name")
    text = (importlib.resources.files("smoe.routing") / "_template.py").read_text(encoding="utf-8")
    camel = "".join(part.capitalize() for part in name.split("_")) + "Router"
    return text.replace(TEMPLATE_CLASS, camel).replace(TEMPLATE_NAME, name)


def cmd_new_router(args: argparse.Namespace) -> int:
    """Write a commented router template to --out (default NAME.py)."""
    out = Path(args.out or f"{args.name}.py")
    try:
        source = new_router_source(args.name)
        if out.exists():
            raise ValueError(f"{out} exists; choose another --out")
    except ValueError as e:
        print(f"smoe new-router: error: {e}", file=sys.stderr)
        return 2
    out.write_text(source, encoding="utf-8")
    print(f"wrote {out}; next: smoe check-router --import {out} {args.name}  (docs/writing-a-router.md)")
    return 0


def add_import_argument(p: argparse.ArgumentParser) -> None:
    """--import, for the help text: `main` takes every --import off the command line before parsing."""
    p.add_argument("--import", action="append", dest="imports", metavar="MODULE|FILE.py",
                   help=f"import this plugin first: a module or a .py file that registers routers, layer-level "
                        f"methods, residual rules or tasks (repeatable; also {ENV_VAR}=a,b.py and the "
                        f"{ENTRY_POINT_GROUP!r} entry points)")


def add_plugin_parsers(sub) -> None:
    p = sub.add_parser("check-router", help="the conformance checks every built-in router passes, on any router "
                                            "(exit status 1 when one fails)")
    p.add_argument("names", nargs="*", metavar="NAME[:OPTION=VALUE...]",
                   help="routers or layer-level methods, with options (default: every one registered)")
    p.add_argument("--experts", type=int, default=4, metavar="E", help="experts of the checked layers (default 4)")
    p.add_argument("--checks", type=lambda text: [c.strip() for c in text.split(",") if c.strip()], default=None,
                   metavar="CHECK[,...]",
                   help="run only these checks: " + ", ".join(CHECKS))
    add_import_argument(p)
    p.set_defaults(fn=cmd_check_router)
    p = sub.add_parser("new-router", help="write a commented template of a router to start from")
    p.add_argument("name", metavar="NAME", help="the name it registers (lower case, e.g. cosine)")
    p.add_argument("--out", metavar="FILE", help="where to write it (default NAME.py; never overwritten)")
    p.set_defaults(fn=cmd_new_router)
