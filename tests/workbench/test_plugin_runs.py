"""A router from a file outside the repository through the whole workbench: `smoe compare --import` against topk
(in this process, with local workers, on a Dask cluster), results and run configs that record it (and a command
that re-runs the comparison), `smoe show`, `smoe report` and `smoe.load_model` on its runs (in a fresh process:
the run's config names the plugin), the same router installed with an entry point, the template of `smoe
new-router`, and a comparison refused before training when a router fails its checks."""

import hashlib
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from smoe import plugins
from smoe.cli import main
from smoe.plugins import file_module_name, load_plugin
from smoe.registry import forget_plugin
from smoe.routing import available_routers
from smoe.workbench.grid.executors import GridProgress, LocalProcesses, Outcome
from smoe.workbench.results.schema import load_results
from tests.conftest import COSINE

ROOT = Path(__file__).resolve().parents[2]
TINY = ["model.d_model=16", "model.num_layers=2", "model.num_heads=2", "model.ffn_hidden=16", "train.batch_size=16",
        "data.probe_tokens=340"]


def compare(out: Path, *args: str, routers: str = "topk,cosine", seeds: int = 2, steps: int = 2) -> int:
    tiny = [w for o in TINY for w in ("--set", o)]
    return main(["compare", *args, "--task", "digits", "--routers", routers, "--seeds", str(seeds), "--steps",
                 str(steps), "--corrupt", "", "--out", str(out), "--no-progress", *tiny])


def metrics(out: Path) -> dict:
    return {(r["label"], r["seed"]): r["final"]["metric"] for r in load_results(out)["runs"]}


@pytest.fixture(scope="module")
def module_cosine(tmp_path_factory):
    """tmp/mine/cosine.py for the tests of this module, forgotten after them (as `fresh_plugins` does)."""
    path = tmp_path_factory.mktemp("mine") / "cosine.py"
    path.write_text(COSINE)
    yield path
    forget_plugin(str(path))
    plugins._LOADED.pop(str(path), None)
    sys.modules.pop(file_module_name(str(path)), None)


@pytest.fixture(scope="module", autouse=True)
def no_report():
    """The report's plots would take most of this file's time; `smoe report` renders it in the slow test."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("smoe.workbench.grid.compare.write_report", lambda out: SimpleNamespace(html=Path(out) / "r"))
        yield


@pytest.fixture(scope="module")
def compared(tmp_path_factory, module_cosine):
    """topk and cosine, 2 seeds of 2 steps each, compared with --import."""
    out = tmp_path_factory.mktemp("cmp")
    assert compare(out, "--import", str(module_cosine)) == 0
    return out


@pytest.fixture
def cosine_run(compared, tmp_path):
    """A copy of cosine's seed-0 run folder, for a test to change."""
    return Path(shutil.copytree(compared / "runs" / "cosine-s0", tmp_path / "cosine-s0"))


def test_a_router_in_a_file_compares_with_topk_and_the_results_say_where_it_came_from(compared, module_cosine):
    results = load_results(compared)
    assert [(r["label"], r["seed"], r["status"]) for r in results["runs"]] == [
        ("topk", 0, "done"), ("cosine", 0, "done"), ("topk", 1, "done"), ("cosine", 1, "done")]
    code = results["provenance"]
    assert code["smoe"] == "0.1.0" and code["torch"] and len(code["commit"]) == 40
    assert [(p["spec"], p["sha256"]) for p in code["plugins"]] == [
        (str(module_cosine), hashlib.sha256(COSINE.encode()).hexdigest())]
    assert results["command"].startswith(f"smoe compare --import {module_cosine} --task digits --routers topk,cosine")
    config = yaml.safe_load((compared / "runs" / "cosine-s0" / "config.yaml").read_text())
    assert config["plugins"] == [str(module_cosine)] and config["provenance"]["plugins"] == code["plugins"]
    topk = yaml.safe_load((compared / "runs" / "topk-s0" / "config.yaml").read_text())
    assert "plugins" not in topk and topk["provenance"]["plugins"] == []  # topk needs no plugin
    assert set(code) == {"smoe", "commit", "dirty", "torch", "python", "plugins", "cwd"}
    before = metrics(compared)
    assert main(shlex.split(results["command"])[1:]) == 0  # the recorded command runs again: every run is done
    assert metrics(compared) == before


def test_load_model_on_its_runs_in_a_fresh_process(compared, module_cosine, tmp_path):
    run = compared / "runs" / "cosine-s1"
    code = (f"import smoe; m = smoe.load_model({str(run)!r}); "
            f"print(type(smoe.moe_layers(m)[0].router).__module__)")
    env = {**{k: v for k, v in os.environ.items() if k != "SMOE_PLUGINS"}, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == file_module_name(str(module_cosine))  # imported from the path in config.yaml


@pytest.mark.slow
def test_show_and_report_on_its_runs(compared, tmp_path):
    run = compared / "runs" / "cosine-s1"
    assert main(["show", str(run), "--out", str(tmp_path / "show")]) == 0
    assert (tmp_path / "show" / "index.html").exists()
    assert main(["report", str(compared), "--out", str(tmp_path / "report")]) == 0
    assert "cosine" in (tmp_path / "report" / "report.md").read_text()


def test_a_run_whose_plugin_is_gone_says_so(cosine_run, tmp_path, capsys):
    config = cosine_run / "config.yaml"
    saved = yaml.safe_load(config.read_text())
    config.write_text(yaml.safe_dump({**saved, "plugins": [str(tmp_path / "gone.py")]}))
    assert main(["eval", str(config.parent), "--corrupt", ""]) == 2
    gone = tmp_path / "gone.py"
    assert capsys.readouterr().err == (f"smoe eval: error: {config}: plugin {gone} (from {config}) could not be "
                                       f"imported: FileNotFoundError: no such file: {gone}\n")


@pytest.mark.slow
def test_local_workers_and_a_dask_cluster_give_the_same_runs(compared, module_cosine, tmp_path):
    serial = metrics(compared)
    assert compare(tmp_path / "jobs", "--import", str(module_cosine), "--jobs", "2") == 0
    assert compare(tmp_path / "dask", "--import", str(module_cosine), "--cluster", "local:2") == 0
    assert metrics(tmp_path / "jobs") == serial == metrics(tmp_path / "dask")


def plugin_task(task, report) -> Outcome:
    """A grid task run in a worker: what it unpickled (a class of the plugin) and the routers it sees."""
    return Outcome(value={"task": type(task).__module__, "routers": available_routers()})


def test_workers_import_the_plugins_before_they_unpickle_a_task(module_cosine, tmp_path):
    load_plugin(str(module_cosine))
    task = sys.modules[file_module_name(str(module_cosine))].CosineOptions()  # a class only the plugin defines
    broken = tmp_path / "broken.py"
    broken.write_text("raise ImportError('no GPU here')\n")
    progress = GridProgress(["a"], [1], [0], enabled=False)
    ((_, outcome),) = LocalProcesses(1, 1, plugins=[str(module_cosine)]).run(plugin_task, [task], progress)
    assert outcome.value["task"] == file_module_name(str(module_cosine)) and "cosine" in outcome.value["routers"]
    ((_, outcome),) = LocalProcesses(1, 1, plugins=[str(broken)]).run(plugin_task, [task], progress)
    assert outcome.error.startswith(f"PluginError: plugin {broken} (from --import) could not be imported: "
                                    f"ImportError: no GPU here")


def test_an_installed_entry_point_needs_no_import(tmp_path, monkeypatch, fresh_plugins, capsys):
    """The cosine router as a package with an entry point: a dist-info on sys.path, as pip installs one."""
    (tmp_path / "mine_pkg").mkdir()
    (tmp_path / "mine_pkg" / "__init__.py").write_text("")
    (tmp_path / "mine_pkg" / "cosine.py").write_text(COSINE.replace('"cosine"', '"cosine_ep"'))
    info = tmp_path / "mine_pkg-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mine-pkg\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[smoe.plugins]\ncosine = mine_pkg.cosine\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["routers", "cosine_ep"]) == 0
    assert "Cosine routing with a learnable temperature" in capsys.readouterr().out
    out = tmp_path / "run"
    assert main(["train", "--task", "digits", "--router", "cosine_ep", "--steps", "1", "--out", str(out),
                 "--no-progress", *(w for o in TINY for w in ("--set", o))]) == 0
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["plugins"] == ["mine_pkg.cosine"]
    assert config["provenance"]["plugins"][0]["found"] == "entry point cosine of mine-pkg 0.1"


@pytest.mark.slow
def test_the_template_passes_the_checks_and_a_comparison(tmp_path, fresh_plugins, capsys):
    path = tmp_path / "mine" / "sharp.py"
    path.parent.mkdir()
    assert main(["new-router", "sharp", "--out", str(path)]) == 0
    assert main(["new-router", "sharp", "--out", str(path)]) == 2  # never overwritten
    assert main(["new-router", "topk"]) == 2
    assert "already registered" in capsys.readouterr().err
    text = path.read_text()
    assert '@register_router("sharp")' in text and "class SharpRouter(Router)" in text and "my_router" not in text
    assert main(["check-router", "--import", str(path), "sharp"]) == 0
    assert "sharp: conforms" in capsys.readouterr().out
    assert compare(tmp_path / "cmp", "--import", str(path), routers="topk,sharp") == 0
    assert all(r["status"] == "done" for r in load_results(tmp_path / "cmp")["runs"])


def test_a_router_failing_its_checks_trains_nothing(tmp_path, fresh_plugins, capsys):
    path = tmp_path / "nogood.py"
    path.write_text(COSINE.replace("reset_parameters(self, generators=global_rng)", "reset_parameters(self)")
                    .replace(', generator=generators("experts")', "")  # no init rule for keyed initialisation
                    .replace('"cosine"', '"nogood"'))
    assert compare(tmp_path / "cmp", "--import", str(path), routers="topk,nogood") == 2
    err = capsys.readouterr().err
    assert "nogood (nogood): init-rule: init_keyed: module 'router' (CosineRouter) has parameters but no init rule" \
        in err and not (tmp_path / "cmp" / "runs").exists()


def test_a_plugin_that_fails_to_import_is_one_clear_line(tmp_path, capsys):
    path = tmp_path / "typo.py"
    path.write_text("from smoe.routing import no_such_name\n")
    assert main(["--import", str(path), "routers"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"smoe routers: error: plugin {path} (from --import) could not be imported: ImportError: "
                          f"cannot import name 'no_such_name' from 'smoe.routing'") and err.count("\n") == 1
    assert main(["show", "--import"]) == 2
    assert capsys.readouterr().err == "smoe: error: --import needs a value: a module name or a .py file\n"

