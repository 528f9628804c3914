"""Plugins (`smoe.plugins`): a router from a file, a module, SMOE_PLUGINS or an installed distribution's entry
point registers once per process under a module name that follows from the file; a plugin that fails to import,
and a name registered twice, are errors naming the plugins; provenance records smoe, torch and each plugin's
sha256."""

import hashlib
import re
import sys
import textwrap

import pytest

from smoe import plugins
from smoe.plugins import (
    PluginError,
    env_specs,
    file_module_name,
    load_all,
    load_entry_points,
    load_plugin,
    load_plugins,
    provenance,
    split_imports,
)
from smoe.routing import available_routers, build_router
from smoe.routing.registry import ROUTERS

TINY_ROUTER = """
from smoe.routing import register_router
from smoe.routing.topk import TopKRouter

@register_router({name!r})
class {cls}(TopKRouter):
    '''A copy of topk registered by a plugin.'''
"""


def write(path, name="plugged", cls="Plugged"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(TINY_ROUTER.format(name=name, cls=cls)))
    return path


def test_a_file_plugin_registers_its_router_once_with_its_sha256(cosine_file):
    plugin = load_plugin(str(cosine_file))
    assert "cosine" in available_routers() and ROUTERS.plugin("cosine") == str(cosine_file)
    assert plugin.spec == plugin.file == str(cosine_file) and plugin.found == "--import"
    assert plugin.sha256 == hashlib.sha256(cosine_file.read_bytes()).hexdigest()
    assert re.fullmatch(r"smoe_plugin_cosine_[0-9a-f]{8}", plugin.module) and plugin.module in sys.modules
    assert type(build_router("cosine", 8, 4)).__module__ == plugin.module == file_module_name(str(cosine_file))
    assert load_plugin(str(cosine_file)) is plugin  # once per process: no second registration
    assert plugins.loaded()[-1] is plugin and ROUTERS.plugin("topk") is None


def test_a_relative_file_and_a_module_on_the_path(tmp_path, monkeypatch, fresh_plugins):
    write(tmp_path / "pkg_a" / "__init__.py", "plugged_module")
    write(tmp_path / "rel" / "plug.py", "plugged_file", "PluggedFile")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    module, file = load_plugins(["pkg_a", "rel/plug.py"])
    assert (module.spec, module.module, module.file) == ("pkg_a", "pkg_a", str(tmp_path / "pkg_a" / "__init__.py"))
    assert file.spec == str(tmp_path / "rel" / "plug.py")  # recorded absolute: it imports again from anywhere
    assert {"plugged_module", "plugged_file"} <= set(available_routers())


def test_smoe_plugins_lists_modules_and_files(tmp_path, monkeypatch, fresh_plugins):
    path = write(tmp_path / "env_plug.py", "plugged_env")
    monkeypatch.setenv("SMOE_PLUGINS", f" {path} , ,")
    assert env_specs() == [str(path)] and env_specs({"SMOE_PLUGINS": "a.b,c.py"}) == ["a.b", "c.py"]
    monkeypatch.setattr(plugins.metadata, "entry_points", lambda group: [])
    (plugin,) = load_all()
    assert plugin.found == "SMOE_PLUGINS" and "plugged_env" in available_routers()


def test_an_installed_distributions_entry_point(tmp_path, monkeypatch, fresh_plugins):
    """A fake distribution on sys.path (a dist-info folder with entry_points.txt, as pip installs one) is found
    without --import."""
    write(tmp_path / "ep_pkg" / "routers.py", "plugged_ep", "PluggedEP")
    (tmp_path / "ep_pkg" / "__init__.py").write_text("")
    info = tmp_path / "ep_pkg-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-pkg\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text("[smoe.plugins]\nrouters = ep_pkg.routers\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    found = [p for p in load_entry_points() if p.spec == "ep_pkg.routers"]
    assert [p.found for p in found] == ["entry point routers of ep-pkg 0.3"]
    assert ROUTERS.plugin("plugged_ep") == "ep_pkg.routers"


def test_a_plugin_that_fails_names_itself_and_the_exception_and_registers_nothing(tmp_path, fresh_plugins):
    path = write(tmp_path / "broken.py", "half_done")
    path.write_text(path.read_text() + "\nraise RuntimeError('the GPU is on fire')\n")
    with pytest.raises(PluginError, match=rf"plugin {re.escape(str(path))} \(from --import\) could not be imported: "
                                          r"RuntimeError: the GPU is on fire"):
        load_plugin(str(path))
    assert "half_done" not in available_routers() and file_module_name(str(path)) not in sys.modules
    with pytest.raises(PluginError, match="no such file"):
        load_plugin(str(tmp_path / "nowhere.py"))
    with pytest.raises(PluginError, match="No module named 'no_such_module_xyz'"):
        load_plugin("no_such_module_xyz")
    with pytest.raises(PluginError, match="neither a module name"):
        load_plugin("not a module")


def test_two_plugins_registering_one_name_name_both(tmp_path, fresh_plugins):
    first, second = write(tmp_path / "a" / "one.py"), write(tmp_path / "b" / "two.py")
    load_plugin(str(first))
    a, b = re.escape(str(first)), re.escape(str(second))
    with pytest.raises(PluginError, match=rf"router 'plugged' is registered twice: by Plugged from plugin {a} and "
                                          rf"by Plugged from plugin {b}"):
        load_plugin(str(second))
    topk = write(tmp_path / "c" / "topk.py", "topk", "MyTopK")
    with pytest.raises(PluginError, match=rf"router 'topk' is registered twice: by TopKRouter from module "
                                          rf"smoe\.routing\.topk and by MyTopK from plugin {re.escape(str(topk))}"):
        load_plugin(str(topk))


def test_import_arguments_anywhere_on_the_command_line():
    argv = ["--import", "a.py", "compare", "--task", "x", "--import=mine.cosine", "--seeds", "2"]
    assert split_imports(argv) == (["compare", "--task", "x", "--seeds", "2"], ["a.py", "mine.cosine"])
    with pytest.raises(PluginError, match="--import needs a value"):
        split_imports(["show", "--import"])


def test_provenance_names_the_code_that_ran(cosine_file):
    load_plugin(str(cosine_file))
    record = provenance([str(cosine_file)])
    assert record["smoe"] == "0.1.0" and record["torch"] and record["python"]
    assert re.fullmatch(r"[0-9a-f]{40}", record["commit"]) and isinstance(record["dirty"], bool)  # a checkout
    (plugin,) = record["plugins"]
    assert plugin["sha256"] == hashlib.sha256(cosine_file.read_bytes()).hexdigest()
    assert provenance([])["plugins"] == []
