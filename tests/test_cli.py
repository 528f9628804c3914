"""The command line: bad input is one clear line on stderr and exit status 2, never a traceback (issue 19)."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from smoe.cli import main
from smoe.workbench.train.run_folder import LOCK_FILE

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--set", "model.d_model=16", "--set", "model.num_layers=1", "--set", "model.ffn_hidden=16",
        "--set", "data.probe_tokens=0"]


def error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_an_output_that_is_a_file_or_not_writable(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    for out, message in ((tmp_path / "file", "is a file, not a folder"), ("/sys/smoe-run", "cannot create")):
        assert main(["train", "--task", "digits", "--steps", "1", "--out", str(out), *TINY]) == 2
        assert message in error(capsys)
        assert main(["compare", "--task", "digits", "--routers", "topk", "--out", str(out)]) == 2
        assert message in error(capsys)


@pytest.mark.parametrize("item, message", [
    ("train.lr=.inf", "train.lr must be a finite number, got inf"),
    ("train.lr=.nan", "train.lr must be a finite number, got nan"),
    ("model.moe.router_options.noise_std=-.inf",
     "model.moe.router_options.noise_std must be a finite number, got -inf"),
    ("model.moe.num_experts=[1", "--set model.moe.num_experts=[1: '[1' is not a YAML value"),
    ("train.lr=@x", "is not a YAML value"),
    ("train.lr=1e308", "train: lr must be <= 1000.0, got 1e+308"),  # AdamW's update would overflow
    ("train.beta1=1", "train: beta1 must be < 1.0, got 1"),
    ("train.beta2=1.0", "train: beta2 must be < 1.0, got 1.0"),
])
def test_non_finite_or_overflowing_floats_and_yaml_errors_in_set(tmp_path, capsys, item, message):
    assert main(["train", "--task", "digits", "--set", item, "--out", str(tmp_path / "run")]) == 2
    err = error(capsys)
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_a_damaged_config_yaml_is_one_line_naming_the_file(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("task: digits\nmodel: {d_model: 16\n")
    for command in ("analyze", "eval"):
        assert main([command, str(tmp_path)]) == 2
        err = error(capsys)
        assert f"{tmp_path / 'config.yaml'} is not valid YAML (line 3" in err and err.count("\n") == 1


def test_a_fifo_as_data_path(tmp_path, capsys):
    os.mkfifo(tmp_path / "pipe")
    assert main(["train", "--task", "text", "--set", f"data.path={tmp_path / 'pipe'}", "--out",
                 str(tmp_path / "run")]) == 2
    assert "is not a regular file or a folder" in error(capsys)


def test_eval_embed_help(capsys):
    with pytest.raises(SystemExit) as info:
        main(["eval-embed", "-h"])
    assert info.value.code == 0 and capsys.readouterr().out.startswith("usage: smoe eval-embed")


def test_resume_with_fewer_steps_than_done_is_refused(tmp_path, capsys):
    args = ["train", "--task", "digits", "--out", str(tmp_path), "--no-progress", *TINY]
    assert main([*args, "--steps", "2"]) == 0
    config = (tmp_path / "config.yaml").read_text()
    capsys.readouterr()
    assert main([*args, "--steps", "1", "--resume"]) == 2
    assert "at step 2, past steps=1; nothing to do" in error(capsys)
    assert (tmp_path / "config.yaml").read_text() == config


@pytest.mark.slow
def test_two_smoe_train_on_one_folder(tmp_path):
    """The red-team case: the second writer exits at once (status 2) naming the folder and the first one's pid."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "smoe", "train", "--task", "digits", "--out", str(tmp_path / "ct"), "--no-progress",
           *TINY]
    first = subprocess.Popen([*cmd, "--steps", "1000000"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        lock = tmp_path / "ct" / LOCK_FILE
        deadline = time.monotonic() + 120
        while not (lock.exists() and lock.read_text().strip()) and first.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        second = subprocess.run([*cmd, "--steps", "20", "--seed", "1"], env=env, capture_output=True, text=True,
                                timeout=120)
        assert second.returncode == 2
        assert f"{tmp_path / 'ct'} is being written by another smoe process (pid {first.pid})" in second.stderr
    finally:
        first.kill()
        first.wait()


# ---------------------------------------------------------------- one error wrapper (issue: reliability, third round)


def test_bench_help_exits_0(capsys):
    with pytest.raises(SystemExit) as info:
        main(["bench", "-h"])
    assert info.value.code == 0 and capsys.readouterr().out.startswith("usage: smoe bench")


def test_debug_shows_the_traceback_of_an_error(tmp_path, capsys):
    args = ["train", "--task", "digits", "--set", "model.bogus=1", "--out", str(tmp_path / "run")]
    assert main(args) == 2
    err = error(capsys)
    assert err.startswith("smoe train: error: ") and "unknown model key 'bogus'" in err and err.count("\n") == 1
    with pytest.raises(ValueError, match="unknown model key 'bogus'"):
        main([*args, "--debug"])


def test_an_empty_out_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--task", "digits", "--steps", "1", "--out", "", *TINY]) == 2
    assert "--out must name a folder, got ''" in error(capsys)
    assert main(["compare", "--task", "digits", "--routers", "topk", "--steps", "1", "--out", " "]) == 2
    assert "--out must name a folder, got ' '" in error(capsys)
    assert list(tmp_path.iterdir()) == []


def test_unknown_top_level_keys_of_a_config_file_are_refused(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("task: digits\nmodle: {num_experts: 16}\n")
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run")]) == 2
    err = error(capsys)
    assert "unknown key 'modle'" in err and "valid keys: task, preset, router, seed, device, " in err
    assert "data, model, train" in err
    assert not (tmp_path / "run").exists()


def test_a_config_that_is_not_a_small_regular_file_is_refused_without_reading_it(tmp_path, capsys):
    os.mkfifo(tmp_path / "pipe")  # opening it would block
    (tmp_path / "big.yaml").write_text("task: digits\n" + "#" * 2**20 + "\n")
    for path, message in (("/dev/zero", "not a regular file"), (tmp_path / "pipe", "not a regular file"),
                          (tmp_path, "not a regular file"), (tmp_path / "big.yaml", "larger than 1 MiB"),
                          (tmp_path / "missing.yaml", "No such file")):
        assert main(["train", "--config", str(path), "--out", str(tmp_path / "run")]) == 2
        err = error(capsys)
        assert message in err and str(path) in err and err.count("\n") == 1


@pytest.mark.parametrize("args, message", [
    (["/nonexistent/model"], "MODEL '/nonexistent/model' is neither a run directory"),
    (["hf-tiny:bogus"], "ARCH must be one of ['mixtral', 'olmoe', 'qwen2_moe', 'qwen3_moe'], got 'bogus'"),
    (["hf-tiny:mixtral", "--router", "bogus"], "unknown router 'bogus'"),
    (["hf-tiny:mixtral", "--router", "topk:nope=1"], "unknown option(s) ['nope'] for router 'topk'"),
    (["hf-tiny:mixtral", "--max-len", "0"], "max_len must be >= 1, got 0"),
    (["hf-tiny:mixtral", "--max-train", "0"], "max_train must be >= 1, got 0"),
    (["hf-tiny:mixtral", "--batch-size", "0"], "batch_size must be >= 1, got 0"),
])
def test_eval_embed_errors_are_one_line_before_any_model_is_loaded(capsys, args, message):
    assert main(["eval-embed", *args]) == 2
    err = error(capsys)
    assert err.startswith("smoe eval-embed: error: ") and message in err and err.count("\n") == 1


def test_eval_embed_of_a_run_of_another_task(tmp_path, capsys):
    args = ["train", "--task", "digits", "--steps", "1", "--out", str(tmp_path), "--no-progress", *TINY,
            "--set", "model.num_layers=2", "--set", "data.num_samples=200"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(["eval-embed", str(tmp_path)]) == 2
    assert "eval-embed needs a language-model run (lm-bbc or text), got task 'digits'" in error(capsys)
