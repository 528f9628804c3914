import json

import pytest
import yaml

from smoe.cli import main
from smoe.layer import MoEConfig
from smoe.workbench.run.config import parse_value, resolve_config, resolve_config_file
from smoe.workbench.run.lifecycle import check_same_config, comparable
from smoe.workbench.run.runner import load_model, train_run
from smoe.workbench.train.checkpoint import load_checkpoint, save_checkpoint
from smoe.workbench.train.config import TrainConfig
from smoe.workbench.train.hints import thread_hint
from smoe.workbench.train.run_folder import read_yaml


def test_values_parse_as_yaml_with_exponent_floats():
    assert parse_value("1e-3") == 0.001 and parse_value("3") == 3 and parse_value("true") is True
    assert parse_value("[16, 32, 64]") == [16, 32, 64] and parse_value("null") is None
    assert parse_value("learned") == "learned"


def test_preset_router_and_overrides_compose():
    run = resolve_config("lm-bbc", "tiny", router="topk", seed=4, steps=7,
                         overrides=["train.lr=1", "model.moe.num_experts=6", "model.moe.router_options.noise=learned",
                                    "model.moe.router_options.z_loss_coef=1e-3", "data.seq_len=32"])
    assert run.train.steps == 7 and run.train.schedule_steps == 300  # --steps never moves the schedule
    assert run.train.lr == 1.0 and isinstance(run.train.lr, float)
    assert run.model["moe"]["num_experts"] == 6 and run.model["moe"]["router"] == "topk"
    assert run.model["moe"]["router_options"] == {"k": 2, "noise": "learned", "z_loss_coef": 0.001}
    assert run.model_config(vocab_size=300, max_len=32).moe.router_options.noise == "learned"
    assert run.data.seq_len == 32 and run.seed == 4
    assert isinstance(run.train, TrainConfig)


def test_task_router_defaults_apply_only_to_that_router():
    options = resolve_config("sketch-vae").model["moe"]["router_options"]
    assert options["load_balance_coef"] == 0.0 and options["k"] == 1  # the task's topk options, the preset's k
    assert resolve_config("sketch-vae", router="expert_choice").model["moe"]["router_options"] == {"k": 1}


def test_a_layer_level_method_wraps_the_presets_router():
    run = resolve_config("lm-bbc", router="s2moe", overrides=["model.moe.method_options.noise_scale=0.5"])
    moe = run.model_config(vocab_size=300, max_len=64).moe
    assert (moe.method, moe.router, moe.router_options.k) == ("s2moe", "topk", 2)
    assert moe.method_options.noise_scale == 0.5 and moe.method_options.eval_k == 1


def test_run_config_serialises_to_yaml():
    run = resolve_config("digits")
    config = run.to_dict(run.model_config(patch_dim=4, num_patches=16, num_classes=10))
    assert yaml.safe_load(yaml.safe_dump(config)) == config
    assert config["model"]["patch_dim"] == 4 and config["train"]["steps"] == 300


@pytest.mark.parametrize("kwargs, match", [
    ({"task": "nope"}, "unknown task 'nope'; available tasks: cls-bbc, digits"),
    ({"task": "digits", "preset": "huge"}, "preset must be one of \\['tiny', 'medium', 'small', 'decisive'\\]"),
    ({"task": "digits", "router": "nope"}, "router must be one of"),
    ({"task": "digits", "device": "tpu"}, "device"),
    ({"task": "digits", "seed": -1}, "seed must be >= 0"),
    ({"task": "digits", "overrides": ["bogus=1"]}, "in no section"),
    ({"task": "digits", "overrides": ["model.bogus=1"]}, "unknown model key 'bogus'; valid keys: d_model"),
    ({"task": "digits", "overrides": ["model.num_classes=3"]}, "derived from the data"),
    ({"task": "digits", "overrides": ["model.moe.router=topk"]}, "choose the router .* with --router"),
    ({"task": "digits", "overrides": ["model.moe.method=s2moe"]}, "choose the router .* with --router"),
    ({"task": "digits", "overrides": ["model.k=1"]}, "unknown model key 'k'; valid keys: .*moe"),
    ({"task": "digits", "overrides": ["model.moe.k=1"]}, r"moe: unknown key\(s\) \['k'\]"),
    ({"task": "digits", "overrides": ["model.moe.router_options.bogus=1"]}, r"unknown option\(s\) \['bogus'\]"),
    ({"task": "digits", "overrides": ["model.moe.router_options.k=5"]}, "k=5 must be <= num_experts=4"),
    ({"task": "digits", "overrides": ["lr"]}, "expects key=value"),
    ({"task": "digits", "overrides": ["model.d_model=1.5"]}, "model: d_model must be an int"),
    ({"task": "digits", "overrides": ["train.lr=-1"]}, "train: lr must be > 0"),
    ({"task": "digits", "overrides": ["model.moe.num_experts.x=1"]}, "num_experts is not a mapping"),
    ({"task": "lm-bbc", "overrides": ["data.vocab_size=10"]}, "data: vocab_size must be >= 258"),
])
def test_bad_configurations_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        resolve_config(**kwargs)


def test_cli_train_help_lists_tasks_routers_and_presets(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for word in ("lm-bbc", "cls-bbc", "digits", "mnist1d", "sketch-vae", "text", "topk", "expert_choice", "tiny",
                 "small", "--resume", "--set"):
        assert word in text


def test_cli_train_reports_bad_input(capsys, tmp_path):
    assert main(["train", "--task", "digits", "--router", "nope", "--out", str(tmp_path)]) == 2
    assert "router must be one of" in capsys.readouterr().err
    assert main(["train", "--task", "digits", "--set", "model.bogus=1", "--out", str(tmp_path)]) == 2
    assert "unknown model key 'bogus'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--task", "nope", "--out", str(tmp_path)])
    assert "invalid choice" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing written


def test_a_saved_config_is_a_valid_config_file(tmp_path):
    run = resolve_config("sketch-vae", seed=3, overrides=["model.moe.num_experts=3", "train.lr=2e-3"])
    saved = tmp_path / "config.yaml"
    saved.write_text(yaml.safe_dump(run.to_dict(run.model_config(image_size=28))))  # as a run folder holds it
    again = resolve_config_file(saved)
    assert comparable(again) == comparable(run) and again.seed == 3
    tweaked = resolve_config_file(saved, seed=5, steps=9, overrides=["train.lr=1e-3"])
    assert (tweaked.seed, tweaked.train.steps, tweaked.train.lr, tweaked.model["moe"]["num_experts"]) == (5, 9, 1e-3, 3)
    other = resolve_config_file(saved, router="expert_choice")  # the file's topk options do not follow, but k does
    assert other.router == "expert_choice" and other.model["moe"]["router_options"] == {"k": 1}
    partial = tmp_path / "partial.yaml"
    partial.write_text("task: digits\nmodel: {moe: {num_experts: 8}}\n")  # what the file leaves out: its preset's
    run = resolve_config_file(partial)
    assert run.model["moe"]["num_experts"] == 8 and run.model["moe"]["router_options"] == {"k": 2}
    assert run.train == resolve_config("digits").train
    for text, match in [("[1, 2]", "YAML mapping with a task"), ("task: digits\ntrain: 3", "'train' must be a map"),
                        ("task: digits\nmodel: {bogus: 1}", "model: .*bogus")]:
        partial.write_text(text)
        with pytest.raises(ValueError, match=match):
            resolve_config_file(partial)
    with pytest.raises(ValueError, match="readable YAML file"):
        resolve_config_file(tmp_path / "nowhere.yaml")


def test_a_config_file_never_overrides_its_own_keys_silently(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("task: digits\nmodel: {router: expert_choice, router_options: {capacity_factor: 2.0}}\n")
    run = resolve_config_file(path)  # the model section's router (flat, older spelling), with its options
    assert run.router == "expert_choice" and run.model["moe"]["router_options"]["capacity_factor"] == 2.0
    path.write_text("task: digits\nrouter: topk\nmodel: {moe: {router: expert_choice}}\n")
    with pytest.raises(ValueError, match=r"sets the router twice, differently: router: topk \(top level\) and "
                                         r"model.moe.router: expert_choice; keep one"):
        resolve_config_file(path)
    path.write_text("task: digits\nrouter: expert_choice\nmodel: {moe: {router: expert_choice}}\n")
    assert resolve_config_file(path).router == "expert_choice"
    path.write_text("task: digits\nsteps: 5\n")
    with pytest.raises(ValueError, match=r"unknown key 'steps'; valid keys: task, preset, router"):
        resolve_config_file(path)


def test_a_config_file_imports_its_plugins(tmp_path, cosine_file):
    path = tmp_path / "c.yaml"
    path.write_text(f"task: digits\nrouter: cosine\nplugins: [{cosine_file}]\n")
    run = resolve_config_file(path)
    assert run.router == "cosine" and run.plugins == [str(cosine_file)]
    assert run.to_dict()["plugins"] == [str(cosine_file)] and "plugins" not in resolve_config("digits").to_dict()


def test_cli_train_from_a_config_file(tmp_path, capsys):
    source = tmp_path / "a"
    tiny = ["--set", "model.d_model=16", "--set", "model.num_heads=2", "--set", "model.ffn_hidden=16",
            "--set", "train.batch_size=8", "--set", "data.probe_tokens=34"]
    assert main(["train", "--task", "digits", "--steps", "2", "--out", str(source), "--no-progress", *tiny]) == 0
    capsys.readouterr()
    out = tmp_path / "b"
    assert main(["train", "--config", str(source / "config.yaml"), "--seed", "1", "--steps", "2", "--set",
                 "train.lr=1e-3", "--out", str(out), "--no-progress"]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["seed"] == 1 and saved["train"]["lr"] == 1e-3 and saved["model"]["d_model"] == 16
    for args in (["--task", "digits", "--config", "x.yaml"], ["--config", "x.yaml", "--preset", "small"], []):
        assert main(["train", *args, "--out", str(tmp_path / "c")]) == 2
        assert "give --task (and --preset) or --config" in capsys.readouterr().err


def test_training_logs_the_load_of_every_expert(tmp_path):
    run = resolve_config("digits", steps=2, overrides=["model.d_model=16", "model.num_heads=2", "model.ffn_hidden=16",
                                                       "train.batch_size=8", "train.log_every=1", "data.probe_tokens=0",
                                                       "model.num_layers=2", "model.moe_every=1"])
    train_run(run, tmp_path, progress=False, tb_dir=tmp_path / "named")
    record = next(json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines())
    loads = {k: v for k, v in record.items() if k.startswith("load/")}
    assert sorted(loads) == [f"load/layer{i}/expert{e}" for i in range(2) for e in range(4)]
    assert sum(loads[f"load/layer0/expert{e}"] for e in range(4)) == pytest.approx(1.0)
    assert any((tmp_path / "named").glob("events.out.tfevents.*")) and not (tmp_path / "tb").exists()


def test_thread_hint_only_on_a_loaded_machine():
    assert thread_hint(load=0.5, cores=2, threads=2) is None
    assert thread_hint(load=6.0, cores=2, threads=1) is None  # one thread already
    assert "OMP_NUM_THREADS=1" in thread_hint(load=6.0, cores=2, threads=2)


def test_cli_routers_lists_options_with_defaults(capsys):
    assert main(["routers", "topk"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("topk") and "load_balance_coef = 0.01" in out and "xmoe" not in out
    assert main(["routers", "--options"]) == 0
    out = capsys.readouterr().out
    assert "noise = 'none'" in out and "infonce_coef = 0.1" in out  # a router's and a layer-level method's
    assert main(["routers", "nope"]) == 2 and "unknown router 'nope'" in capsys.readouterr().err


def flat_spelling(config: dict) -> dict:
    """A run config as smoe wrote it before the MoE layer's config was nested: its fields flat in the model section
    (num_experts, k, router, router_options holding only the options given, ...)."""
    model = dict(config["model"])
    moe = model.pop("moe")
    model.update(expert=moe["expert"], num_experts=moe["num_experts"], k=moe["router_options"]["k"],
                 router=moe["router"], router_options={}, capacity_factor=moe["capacity_factor"],
                 num_shared_experts=moe["num_shared_experts"], shared_gate=moe["shared_gate"])
    return {**config, "model": model}


def test_a_run_written_in_the_flat_spelling_loads_and_resumes(tmp_path):
    sets = ["model.d_model=16", "model.num_heads=2", "model.ffn_hidden=16", "model.num_layers=2",
            "train.batch_size=8", "data.probe_tokens=0", "train.checkpoint_every=2", "train.eval_every=0"]
    folder = tmp_path / "run"
    train_run(resolve_config("digits", steps=2, overrides=sets), folder, progress=False)
    (folder / "config.yaml").write_text(yaml.safe_dump(flat_spelling(read_yaml(folder / "config.yaml"))))
    tensors, state = load_checkpoint(folder / "checkpoints")
    kept = {k: v for k, v in state.items() if k not in ("step", "tensors_file", "tensors_sha256", "state_sha256")}
    save_checkpoint(folder / "checkpoints", 2, tensors, {**kept, "config": flat_spelling(state["config"])}, keep=2)
    assert "moe" not in read_yaml(folder / "config.yaml")["model"]
    assert load_model(folder).config.moe == MoEConfig(num_experts=4, router_options={"k": 2})
    longer = resolve_config("digits", steps=3, overrides=sets)
    check_same_config(longer, folder)  # the grid sees the same configuration
    assert train_run(longer, folder, resume=True, progress=False).status == "done"
    with pytest.raises(ValueError, match="another configuration"):
        check_same_config(resolve_config("digits", steps=3, overrides=[*sets, "model.moe.router_options.k=1"]), folder)
