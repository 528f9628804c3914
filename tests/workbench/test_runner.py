import pytest
import yaml

from smoe.cli import main
from smoe.workbench.run_config import parse_value, resolve_config
from smoe.workbench.trainer import TrainConfig


def test_values_parse_as_yaml_with_exponent_floats():
    assert parse_value("1e-3") == 0.001 and parse_value("3") == 3 and parse_value("true") is True
    assert parse_value("[16, 32, 64]") == [16, 32, 64] and parse_value("null") is None
    assert parse_value("learned") == "learned"


def test_preset_router_and_overrides_compose():
    run = resolve_config("lm-bbc", "tiny", router="topk", seed=4, steps=7,
                         overrides=["train.lr=1", "num_experts=6", "model.router_options.noise=learned",
                                    "model.router_options.z_loss_coef=1e-3", "data.seq_len=32"])
    assert run.train.steps == 7 and run.train.schedule_steps == 300  # --steps never moves the schedule
    assert run.train.lr == 1.0 and isinstance(run.train.lr, float)
    assert run.model["num_experts"] == 6 and run.model["router"] == "topk"
    assert run.model["router_options"] == {"noise": "learned", "z_loss_coef": 0.001}
    assert run.data.seq_len == 32 and run.seed == 4
    assert isinstance(run.train, TrainConfig)


def test_task_router_defaults_apply_only_to_that_router():
    assert resolve_config("sketch-vae").model["router_options"] == {"load_balance_coef": 0.0}
    assert resolve_config("sketch-vae", router="expert_choice").model["router_options"] == {}


def test_run_config_serialises_to_yaml():
    run = resolve_config("digits")
    config = run.to_dict(run.model_config(patch_dim=4, num_patches=16, num_classes=10))
    assert yaml.safe_load(yaml.safe_dump(config)) == config
    assert config["model"]["patch_dim"] == 4 and config["train"]["steps"] == 300


@pytest.mark.parametrize("kwargs, match", [
    ({"task": "nope"}, "unknown task 'nope'; available tasks: cls-bbc, digits"),
    ({"task": "digits", "preset": "huge"}, "preset must be one of \\['tiny', 'small'\\]"),
    ({"task": "digits", "router": "nope"}, "router must be one of"),
    ({"task": "digits", "device": "tpu"}, "device"),
    ({"task": "digits", "seed": -1}, "seed must be >= 0"),
    ({"task": "digits", "overrides": ["bogus=1"]}, "in no section"),
    ({"task": "digits", "overrides": ["model.bogus=1"]}, "unknown model key 'bogus'; valid keys: d_model"),
    ({"task": "digits", "overrides": ["model.num_classes=3"]}, "derived from the data"),
    ({"task": "digits", "overrides": ["model.router=topk"]}, "choose the router with --router"),
    ({"task": "digits", "overrides": ["lr"]}, "expects key=value"),
    ({"task": "digits", "overrides": ["model.d_model=1.5"]}, "model: d_model must be an int"),
    ({"task": "digits", "overrides": ["train.lr=-1"]}, "train: lr must be > 0"),
    ({"task": "digits", "overrides": ["model.k.x=1"]}, "model.k is not a dict"),
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
